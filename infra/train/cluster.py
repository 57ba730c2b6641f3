"""Start or join the Ray cluster the training jobs run on, and run jobs side by side on it.

RAY_ADDRESS set: join that cluster. Unset: start a local one on loopback. A local start
writes `~/ray_bootstrap_config.yaml` (`provider: {type: local}`) when it is missing
(infra.stack.services.ensure_bootstrap_file says why). A local start also keeps Ray on
127.0.0.1: by default Ray binds the machine's outward address, found by a UDP "connect" to
a public DNS server, and its processes talk to each other there. A local cluster takes
drivers and jobs with its token only (Ray's token authentication; the token file is the
user's alone).

Secrets (the MLflow credentials) never travel in the runtime_env or a job's config: the
cluster shows both to anyone who can read its job table or dashboard. The driver puts them
in Ray's object store (`share_secrets`) and each training worker sets them in its own
process environment (`take_secrets`).
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import ray

from infra.experiment.settings import OFFLINE_ENV, Settings
from infra.train import console
from infra.stack.services import ensure_bootstrap_file

Job = TypeVar("Job")
Handle = TypeVar("Handle")

# What a worker needs to log to an MLflow server with authentication, and nobody else may read.
SECRET_ENV: tuple[str, ...] = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                               "MLFLOW_TRACKING_TOKEN")


class ClusterError(RuntimeError):
    """Ray could not be started or joined; names the address."""


def worker_env(settings: Settings) -> dict[str, str]:
    """The variables every Ray worker of this driver gets: offline switches, home, MLflow's
    address (its credentials go through `share_secrets`: the runtime_env is on display)."""
    env = {k: os.environ.get(k, v) for k, v in OFFLINE_ENV.items()}
    # report() waits for the controller's poll; a short poll keeps short jobs short.
    env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    # Ray Train re-logs every print of a worker by default, so each progress line came twice.
    env["RAY_TRAIN_ENABLE_PRINT_PATCH"] = os.environ.get("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    if not settings.ray_address:  # spot-instance preemption cannot happen on this machine
        env["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = os.environ.get("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    env["PRUNEGRID_HOME"] = str(settings.home)
    env |= console.worker_env(console.is_verbose())  # progress bars off unless verbose
    if os.environ.get("MLFLOW_TRACKING_URI"):
        env["MLFLOW_TRACKING_URI"] = os.environ["MLFLOW_TRACKING_URI"]
    return env


def share_secrets() -> ray.ObjectRef | None:
    """This driver's MLflow credentials as an object in Ray's store, for its jobs' workers
    (None without credentials). Jobs, actors and Train runs show the ref's id, not its value."""
    found = {key: os.environ[key] for key in SECRET_ENV if os.environ.get(key)}
    return ray.put(found) if found else None  # ray: the object store, owned by this driver


def take_secrets(ref: ray.ObjectRef | None) -> None:
    """On a worker: the driver's credentials into this process's environment only."""
    if ref is not None:
        os.environ.update(ray.get(ref))  # ray: fetch the driver's object


_GCS_PORT = "RAY_GCS_SERVER_PORT"  # read by ray.init when it starts a local cluster


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def connect(settings: Settings, num_cpus: int | None = None) -> bool:
    """Make sure this process is a Ray driver; True when this call started Ray."""
    if ray.is_initialized():
        return False
    for key, value in worker_env(settings).items():
        os.environ.setdefault(key, value)  # the controller runs with the driver's environment
    runtime_env = {"env_vars": worker_env(settings)}
    if not settings.ray_address:
        _token_auth()
    verbose = console.is_verbose()
    _driver_logs(verbose)
    level = console.ray_log_level(verbose)  # Ray's start-up lines ("Started a local Ray instance")
    try:
        if settings.ray_address:
            ray.init(address=settings.ray_address, runtime_env=runtime_env, log_to_driver=True,
                     logging_level=level)
        else:
            ensure_bootstrap_file()
            _single_machine()
            # Ray's own actors (Ray Train's placement-group cleaner) find "the" cluster by
            # scanning the machine, which fails beside another Ray (another experiment, a
            # test). So the cluster gets a port chosen here and every worker its address (not
            # this driver's environment: a later Ray in this process would read it).
            address = f"127.0.0.1:{_free_port()}"
            runtime_env["env_vars"]["RAY_ADDRESS"] = address
            os.environ[_GCS_PORT] = address.rsplit(":", 1)[1]
            try:
                ray.init(num_cpus=num_cpus, runtime_env=runtime_env, include_dashboard=True,
                         dashboard_host="127.0.0.1", log_to_driver=True, configure_logging=True,
                         logging_level=level)
            finally:
                os.environ.pop(_GCS_PORT, None)
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


def _driver_logs(verbose: bool) -> None:
    """How this driver prints its workers' output (log_to_driver): never folded, and without
    Ray's "(RayTrainWorker pid=...)" prefix unless verbose (a job's lines name their job).

    Ray folds lines from different workers that differ only in their numbers into one
    "[repeated 2x across cluster]": two jobs' progress lines are such lines. Ray reads both
    switches (RAY_DEDUP_LOGS, RAY_DISABLE_WORKER_LOG_PREFIX; a user's value wins) into module
    constants at import, so the constants are set. tests/integration/test_prune_grid.py
    checks the console a user sees.
    """
    from ray._private import ray_constants, ray_logging  # private, hence the test that guards it

    if "RAY_DEDUP_LOGS" not in os.environ:
        ray_logging.RAY_DEDUP_LOGS = False
    if "RAY_DISABLE_WORKER_LOG_PREFIX" not in os.environ:
        ray_constants.RAY_DISABLE_WORKER_LOG_PREFIX = not verbose


def _token_auth() -> None:
    """Keep token authentication on for a cluster this process starts, with a private token.

    Ray enables it for a local `ray.init` unless RAY_AUTH_MODE says otherwise, and then keeps
    its token in ~/.ray/auth_token, written with the default umask (readable by every local
    user, who could then run code on the cluster): the file is created, or narrowed, to 0600.
    """
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode not in (None, "token"):
        raise ClusterError(f"RAY_AUTH_MODE is '{mode}': the Ray cluster prunegrid starts for itself "
                           "takes drivers and jobs with its token only; unset RAY_AUTH_MODE, or set "
                           "RAY_ADDRESS to a cluster of your own")
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return  # the user's own token: theirs to keep
    token = Path.home() / ".ray" / "auth_token"  # Ray's default place
    token.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not token.exists():
        fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))  # as `ray get-auth-token --generate`
    elif token.stat().st_mode & 0o077:
        token.chmod(0o600)


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
