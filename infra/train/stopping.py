"""Stopping a driver cleanly (Ctrl-C, a cancelled flow run) while its jobs train in threads.

The flow calls `refuse_jobs` (no job starts or restarts, and a job that ends is KILLED, not
FAILED: `requested`), ends its MLflow runs, then `stop_jobs`: each running fit() gets Ray
Train's own abort and returns, then the driver leaves Ray. Ray's processes and Prefect's
temporary server start under `sigint_blocked`, so a terminal's Ctrl-C, sent to the whole
process group, reaches the driver only and nothing dies under the jobs.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator

import ray

_STOPPING = threading.Event()  # set by `refuse_jobs`: this driver is going; jobs' threads read it
_FITTING = threading.Condition()  # guards _fits, the jobs' fit() calls in flight in this process
_fits = 0


@contextlib.contextmanager
def sigint_blocked() -> Iterator[None]:
    """SIGINT blocked in this thread; processes started meanwhile (Ray's, Prefect's server) keep
    the block. A terminal's Ctrl-C goes to its whole process group: so it reaches the driver
    only, which ends them in order (`stop_jobs`). A Ctrl-C meanwhile arrives once unblocked."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


@contextlib.contextmanager
def fitting() -> Iterator[None]:
    """Around one job's fit(): `stop_jobs` leaves Ray only once every fit has returned (a thread
    waiting in ray.get while another shuts Ray down may wait forever)."""
    global _fits
    with _FITTING:
        if _STOPPING.is_set():
            raise RuntimeError("stopped with its driver")
        _fits += 1
    try:
        yield
    finally:
        with _FITTING:
            _fits -= 1
            _FITTING.notify_all()


def refuse_jobs() -> None:
    """From now on this driver starts no training (see `requested`); `stop_jobs` begins here."""
    from ray._private import auto_init_hook  # private, hence tests/integration/test_stop.py

    _STOPPING.set()
    # Any Ray call after a shutdown would start a fresh local cluster, left behind at exit.
    auto_init_hook.enable_auto_connect = False


def stop_jobs(wait_s: float = 60.0) -> None:
    """This driver is stopping (Ctrl-C, a cancelled flow run): abort its running jobs, start none
    again, then leave Ray (a Ray it started shuts down).

    Ray Train aborts a run on Ctrl-C only for a fit() in the main thread (its own SIGINT
    handler); the grid's jobs run in threads, so their controllers get the same call here. An
    aborted controller ends its worker group and exits, and its fit() returns.
    """
    refuse_jobs()
    if not ray.is_initialized():
        return
    deadline = time.monotonic() + wait_s
    while _fits and time.monotonic() < deadline:
        for controller in _controllers():  # again each second: a fit may start its controller late
            with contextlib.suppress(Exception):  # a controller (or Ray) already gone
                controller.abort.remote()  # ray: what Ray Train's own Ctrl-C handler calls
        with _FITTING:
            _FITTING.wait_for(lambda: _fits == 0, timeout=1.0)
    if not _fits:  # past the wait, a fit still in ray.get keeps Ray up rather than hang for good
        ray.shutdown()


def _controllers() -> list:
    """The Ray Train controllers (actor handles) of the fit() calls in this process's threads.

    Ray Train keeps a run's controller in a local of the frame that waits on it (and hands it
    to its SIGINT handler only in the main thread): read there, private, hence
    tests/integration/test_stop.py.
    """
    found = []
    for frame in sys._current_frames().values():
        while frame is not None:
            if frame.f_code.co_name == "_initialize_and_run_controller" and "controller" in frame.f_locals:
                found.append(frame.f_locals["controller"])
            frame = frame.f_back
    return found


def requested() -> bool:
    """Whether `refuse_jobs` was called: a job that ends now was stopped, not failed."""
    return _STOPPING.is_set()
