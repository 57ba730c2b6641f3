"""One driver per experiment: `<PRUNEGRID_HOME>/locks/<experiment>.lock`, held for the flow's life.

Two drivers of one experiment would each take the other's RUNNING MLflow runs for a dead
driver's and close them as KILLED, and resume from the same Ray checkpoint folders; the
second is refused instead, naming the first. The lock is an flock(2), which the kernel drops
when its holder exits however it exits (kill -9 included), so a dead driver never leaves a
stale lock; the pid written in the file is only there to be named.

Held per process and reentrant: `python -m flows.prune_grid` takes it in preflight and the
flow it then runs takes it again without a second lock; a deployment's flow run takes it itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from infra.experiment import paths

_held: dict[Path, int] = {}  # lock files this process holds -> nesting depth


class ExperimentBusy(RuntimeError):
    """Another driver runs the same experiment under the same PRUNEGRID_HOME; names its pid."""


def lock_path(home: str | Path, experiment: str) -> Path:
    return paths.locks_dir(home) / f"{experiment}.lock"


@contextlib.contextmanager
def hold(home: str | Path, experiment: str) -> Iterator[Path]:
    """Hold the experiment's lock inside the block; raise ExperimentBusy at once if taken."""
    path = lock_path(home, experiment).resolve()
    if path in _held:  # this process holds it already (the CLI, then its flow)
        _held[path] += 1
        try:
            yield path
        finally:
            _held[path] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ExperimentBusy(_busy(path, experiment, fd)) from None
        os.ftruncate(fd, 0)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%F %T")}
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        _held[path] = 1
        try:
            yield path
        finally:
            del _held[path]
    finally:
        os.close(fd)  # drops the lock


def _busy(path: Path, experiment: str, fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:  # the holder is writing it this very moment
        holder = {}
    who = (f"pid {holder['pid']} on {holder.get('host', '?')} (since {holder.get('since', '?')})"
           if "pid" in holder else "another process")
    return (f"experiment '{experiment}' is already running: {who} holds {path}. Wait for it to "
            f"finish, or stop it (Ctrl-C in its terminal, or `kill {holder.get('pid', '<pid>')}`) "
            "and run again: the new run resumes where it stopped")
