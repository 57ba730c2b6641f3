"""Start or join the Ray cluster the training jobs run on, and run jobs side by side on it.

RAY_ADDRESS set: join that cluster. Unset: start a local one on loopback. A local start
writes `~/ray_bootstrap_config.yaml` (`provider: {type: local}`) when it is missing
(infra.stack.services.ensure_bootstrap_file says why). A local start also keeps Ray on
127.0.0.1: by default Ray binds the machine's outward address, found by a UDP "connect" to
a public DNS server, and its processes talk to each other there.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import ray

from infra.experiment.settings import OFFLINE_ENV, Settings
from infra.stack.services import ensure_bootstrap_file

Job = TypeVar("Job")
Handle = TypeVar("Handle")


class ClusterError(RuntimeError):
    """Ray could not be started or joined; names the address."""


def worker_env(settings: Settings) -> dict[str, str]:
    """The variables every Ray worker of this driver gets: offline switches, home, MLflow."""
    env = {k: os.environ.get(k, v) for k, v in OFFLINE_ENV.items()}
    # report() waits for the controller's poll; a short poll keeps short jobs short.
    env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    # Ray Train re-logs every print of a worker by default, so each progress line came twice.
    env["RAY_TRAIN_ENABLE_PRINT_PATCH"] = os.environ.get("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    if not settings.ray_address:  # spot-instance preemption cannot happen on this machine
        env["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = os.environ.get("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    env["PRUNEGRID_HOME"] = str(settings.home)
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        if os.environ.get(key):
            env[key] = os.environ[key]
    return env


def connect(settings: Settings, num_cpus: int | None = None) -> bool:
    """Make sure this process is a Ray driver; True when this call started Ray."""
    if ray.is_initialized():
        return False
    for key, value in worker_env(settings).items():
        os.environ.setdefault(key, value)  # the controller runs with the driver's environment
    runtime_env = {"env_vars": worker_env(settings)}
    try:
        if settings.ray_address:
            ray.init(address=settings.ray_address, runtime_env=runtime_env, log_to_driver=True)
        else:
            ensure_bootstrap_file()
            _single_machine()
            ray.init(num_cpus=num_cpus, runtime_env=runtime_env, include_dashboard=True,
                     dashboard_host="127.0.0.1", log_to_driver=True, configure_logging=True,
                     logging_level="WARNING")
    except (ConnectionError, RuntimeError, ValueError) as error:
        where = settings.ray_address or "a local cluster"
        raise ClusterError(f"cannot start or join Ray at {where}: {error}; "
                           "check RAY_ADDRESS (unset it to start a local cluster)") from None
    return True


def _single_machine() -> None:
    """Pin a local cluster to loopback (only for clusters this process starts itself).

    Ray's single-machine mode (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, its default on macOS
    and Windows) uses 127.0.0.1 as the node address. Ray reads the variable into a module
    constant at import, so the constant is set too; the processes Ray starts read the
    variable. tests/integration/test_offline.py checks the result with strace.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants  # private, hence the test that guards it

    ray_constants.ENABLE_RAY_CLUSTER = False


def job_slots(num_workers: int, cpus_per_worker: int, use_gpu: bool) -> int:
    """How many jobs of this shape the cluster can run at once (at least 1).

    Resources decide: the grid submits this many jobs and the next one as each finishes,
    instead of queueing every job in Ray, where a waiting job's controller times out and retries.
    """
    total = ray.cluster_resources()
    fits = int(total.get("CPU", 0) // max(1, num_workers * cpus_per_worker))
    if use_gpu:
        fits = min(fits, int(total.get("GPU", 0) // max(1, num_workers)))
    return max(1, fits)


def run_window(jobs: Sequence[Job], *, slots: int, start: Callable[[Job], Handle],
               is_done: Callable[[Handle], bool],
               settle: Callable[[Job, Handle], Handle | None], poll_s: float = 0.5) -> None:
    """Keep at most `slots` jobs running; start the next as each one finishes.

    `start` submits a job and returns its handle (a future); `settle` is called once a
    handle `is_done` and returns a new handle to keep the job in its slot (a retry), or None.
    """
    pending, running = list(enumerate(jobs)), {}  # index -> (job, handle): jobs need no hash
    while pending or running:
        while pending and len(running) < slots:
            index, job = pending.pop(0)
            running[index] = (job, start(job))
        time.sleep(poll_s)
        for index, (job, handle) in list(running.items()):
            if not is_done(handle):
                continue
            del running[index]
            if (again := settle(job, handle)) is not None:
                running[index] = (job, again)


def disconnect(started: bool) -> None:
    """Shut Ray down if this process started it."""
    if started and ray.is_initialized():
        ray.shutdown()
