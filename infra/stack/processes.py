"""Processes of the local stack: start in their own session, recognise, stop as a group.

Each service keeps three files in the stack folder: `<name>.pid`, `<name>.log` and
`<name>.json` (port, url, pid, process start time). The start time tells our process from a
stranger that reused its pid after a reboot or a crash.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"


class StackError(RuntimeError):
    """A local service could not be started or stopped; the message names the fix."""


@dataclass(frozen=True)
class ServiceInfo:
    name: str
    url: str  # what a browser or client opens (Ray: its dashboard)
    pid: int  # also the process group id
    port: int  # the port clients connect to (Ray: the GCS port of RAY_ADDRESS)
    log: Path


class StateFiles:
    """The pid, log and state files of the services whose folder is `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def log(self, name: str) -> Path:
        return self.root / f"{name}.log"

    def read(self, name: str) -> dict | None:
        try:
            return json.loads((self.root / f"{name}.json").read_text())
        except (OSError, ValueError):
            return None

    def running(self, name: str) -> ServiceInfo | None:
        """The recorded process, if it is alive and not a stranger that reused its pid."""
        state = self.read(name)
        if state is None:
            return None
        pid = state["pid"]
        if not alive(pid) or state.get("start") != start_time(pid):
            return None
        return ServiceInfo(name=name, url=state["url"], pid=pid, port=state["port"],
                           log=self.log(name))

    def write(self, info: ServiceInfo) -> None:
        state = {"name": info.name, "url": info.url, "pid": info.pid, "port": info.port,
                 "log": str(info.log), "start": start_time(info.pid)}
        write_atomic(self.root / f"{info.name}.json", json.dumps(state, indent=2) + "\n")
        write_atomic(self.root / f"{info.name}.pid", f"{info.pid}\n")

    def clear(self, name: str) -> None:
        for suffix in ("pid", "json"):
            (self.root / f"{name}.{suffix}").unlink(missing_ok=True)


# Services this interpreter started, so that their exit is reaped (no zombie looks alive).
_CHILDREN: dict[int, subprocess.Popen] = {}


def spawn(argv: Sequence[str], log: Path, env: Mapping[str, str], cwd: Path) -> int:
    """Start `argv` in a session of its own (it outlives us), output appended to `log`; its pid."""
    with open(log, "ab") as out, _sigint_not_ignored():
        out.write(f"\n=== {time.strftime('%F %T')} {shlex.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(  # own session: outlives us, stopped as one group
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(env), cwd=cwd, start_new_session=True)
    _CHILDREN[proc.pid] = proc
    return proc.pid


def _stat(pid: int) -> list[str]:
    """/proc/<pid>/stat fields from field 3 (state) on; [] if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return raw[raw.rindex(")") + 2:].split()


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    if (proc := _CHILDREN.get(pid)) is not None:
        return proc.poll() is None
    fields = _stat(pid)
    return bool(fields) and fields[0] not in ("Z", "X")


def start_time(pid: int) -> int | None:
    """When `pid` started, in clock ticks since boot; None if there is no such process."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None  # field 22 of /proc/<pid>/stat


def group_members(pgid: int) -> list[int]:
    """Live processes (zombies excluded) in process group `pgid`."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))):
            if fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
                members.append(int(entry.name))
    return members


def stop_recorded(state: dict, grace_s: float, leader_first: bool = False) -> None:
    """Stop the group a state file records, if it is still ours."""
    pid = state["pid"]
    # Ours: the recorded leader (same start time), or, with the leader gone, what is left
    # of its group (a live group keeps its id from being reused as a pid).
    if start_time(pid) == state.get("start") or (not _stat(pid) and group_members(pid)):
        stop_group(pid, grace_s, leader_first=leader_first)


def stop_group(pgid: int, grace_s: float, leader_first: bool = False) -> None:
    """SIGTERM the group (or only its leader), SIGKILL what is left after `grace_s`, reap."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            if leader_first and sig == signal.SIGTERM and alive(pgid):
                os.kill(pgid, sig)
            else:
                os.killpg(pgid, sig)
        deadline = time.monotonic() + wait_s
        while (alive(pgid) or group_members(pgid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not group_members(pgid):
            break
    if (proc := _CHILDREN.pop(pgid, None)) is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
    if survivors := group_members(pgid):
        raise StackError(f"processes {survivors} of group {pgid} survived SIGKILL")


@contextlib.contextmanager
def _sigint_not_ignored() -> Iterator[None]:
    """Children inherit an ignored SIGINT (e.g. from `cmd &` in a script). A Prefect worker
    stops by sending itself SIGINT on SIGTERM, so with SIGINT ignored it never stops."""
    ignored = (threading.current_thread() is threading.main_thread()
               and signal.getsignal(signal.SIGINT) == signal.SIG_IGN)
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # SIG_DFL after exec
    try:
        yield
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


# ---- network and files --------------------------------------------------------------

def http(url: str, body: dict | None = None, timeout: float = 2.0) -> tuple[int | None, bytes]:
    """(status, body) of a GET, or of a JSON POST when `body` is given; (None, b"") if down."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, b""
    except (OSError, ValueError):
        return None, b""


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def port_free(port: int) -> bool:
    """Whether a server could bind `port` on loopback now."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def tail(path: Path, lines: int = 20) -> str:
    """The last `lines` of a log, indented, for an error message."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "    (no log)"
    return "\n".join("    " + line for line in text[-lines:])


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so that a reader sees the old file or the new, never half."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
