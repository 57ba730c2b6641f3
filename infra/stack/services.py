"""The local services: MLflow, Prefect server and worker, a Ray head.

For each: the command that starts it, the environment it runs in, and how to tell it is
ready. Every service listens on loopback only, and none of them phones home.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from infra.experiment.settings import offline_env
from infra.stack.processes import HOST, ServiceInfo, StackError, http

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the servers' entry points, beside this interpreter


def url(port: int) -> str:
    return f"http://{HOST}:{port}"


# ---- MLflow ---------------------------------------------------------------------------

def mlflow_command(root: Path, port: int, workers: int) -> list[str]:
    """`mlflow server` on sqlite, serving the artifacts it stores under `root`."""
    return [str(BIN / "mlflow"), "server",
            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", (root / "artifacts").as_uri(),
            "--host", HOST, "--port", str(port), "--workers", str(workers)]


# ---- Prefect --------------------------------------------------------------------------

def prefect_server_command(port: int) -> list[str]:
    return [str(BIN / "prefect"), "server", "start", "--host", HOST, "--port", str(port),
            "--analytics-off"]


def prefect_worker_command(pool: str, port: int) -> list[str]:
    """A process worker; it never pip-installs a worker package and never prompts."""
    return [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process",
            "--name", worker_name(pool, port), "--with-healthcheck",
            "--install-policy", "never", "--no-prompt"]


def worker_name(pool: str, port: int) -> str:
    # Unique per start (so is its healthcheck port): readiness waits for this very worker.
    return f"prunegrid-{pool}-{port}"


def worker_env(server: ServiceInfo, port: int) -> dict[str, str]:
    """What a worker adds to the stack's variables: its server and its healthcheck address."""
    return {"PREFECT_API_URL": f"{server.url}/api", "PREFECT_WORKER_WEBSERVER_HOST": HOST,
            "PREFECT_WORKER_WEBSERVER_PORT": str(port)}


def ensure_pool(server: ServiceInfo, pool: str, env: Mapping[str, str], cwd: Path) -> None:
    """Create the process work pool unless the server already has it."""
    pool_url = f"{server.url}/api/work_pools/{pool}"
    if http(pool_url)[0] == 200:
        return
    done = subprocess.run([str(BIN / "prefect"), "work-pool", "create", pool, "--type", "process"],
                          env={**env, "PREFECT_API_URL": f"{server.url}/api"}, cwd=cwd,
                          capture_output=True, text=True)
    if http(pool_url)[0] != 200:  # a concurrent create may have won: check, not rc
        raise StackError(f"could not create work pool {pool!r}:\n{done.stdout}{done.stderr}")


def pool_workers(server: ServiceInfo, pool: str) -> list[str]:
    """Names of the workers the server has seen polling `pool`."""
    status, body = http(f"{server.url}/api/work_pools/{pool}/workers/filter", {})
    return [worker["name"] for worker in json.loads(body)] if status == 200 else []


# ---- Ray ------------------------------------------------------------------------------

BOOTSTRAP_NAME = "ray_bootstrap_config.yaml"
BOOTSTRAP_TEXT = (
    "# Written by prunegrid: tells Ray's dashboard this is a local cluster, so it does not\n"
    "# probe cloud-metadata addresses. Safe to keep; delete it if you use `ray up` here.\n"
    "provider:\n  type: local\n"
)


def ensure_bootstrap_file(home: Path | None = None) -> Path:
    """`<home>/ray_bootstrap_config.yaml` (default: ~) saying `provider: {type: local}`.

    Without it Ray's dashboard asks cloud-metadata addresses which cloud it runs on at every
    start, and the pipeline must not send traffic off the machine. Never overwrites a
    user's own file.
    """
    path = (home if home else Path.home()) / BOOTSTRAP_NAME
    if not path.exists():
        path.write_text(BOOTSTRAP_TEXT)
    return path


def ray_command(root: Path, port: int, dashboard_port: int, cpus: int) -> list[str]:
    """A blocking `ray start --head` on loopback with its dashboard."""
    return [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", HOST,
            "--port", str(port), "--num-cpus", str(cpus),
            "--include-dashboard", "true", "--dashboard-host", HOST,
            "--dashboard-port", str(dashboard_port), "--disable-usage-stats",
            "--temp-dir", str(ray_tmp(root))]


def ray_tmp(root: Path) -> Path:
    """Ray's session folder for the stack in `root`."""
    # Ray's unix socket paths must stay under ~107 bytes: a short folder per stack.
    return Path("/tmp") / f"pg-ray-{hashlib.sha1(str(root).encode()).hexdigest()[:8]}"


def ray_token(root: Path) -> Path:
    return root / "ray" / ".ray" / "auth_token"


def ray_client_env(port: int, token: Path) -> dict[str, str]:
    """What a driver needs to join the stack's Ray head."""
    return {"RAY_ADDRESS": f"{HOST}:{port}", "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token),
            # Keeps a joining driver on 127.0.0.1 too (else it looks for the
            # cluster at the machine's outward address).
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def prepare_ray(root: Path) -> dict[str, str]:
    """Files and variables that keep the Ray head on loopback, behind a token, and quiet.

    Ray maps 127.0.0.1 to the machine's outward address and listens on all interfaces
    unless in its single-machine mode; `ray start` leaves token auth off unless asked,
    and then needs the token to exist; its dashboard probes cloud metadata unless its
    home holds the bootstrap file, so the Ray processes get a home of their own in the
    stack folder.
    """
    home, token = root / "ray", ray_token(root)
    home.mkdir(parents=True, exist_ok=True)
    ensure_bootstrap_file(home)
    if not token.exists():
        token.parent.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))  # as `ray get-auth-token --generate`
    return {"HOME": str(home), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}


# ---- environment and readiness --------------------------------------------------------

def base_env(prefect_home: Path, allow_hub: bool) -> dict[str, str]:
    """The environment every service starts from: ours, offline, local, this interpreter's."""
    env = dict(os.environ)
    env |= offline_env(allow_hub)
    env.pop("PREFECT_API_KEY", None)  # these servers are local: never send a cloud key
    env["PREFECT_HOME"] = str(prefect_home)
    # MLflow's job runner (GenAI judges, periodic jobs) is unused here; without it the
    # server is 2 processes instead of 9 and leaves no temp folder in /dev/shm.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    # Flow runs of a process worker import `flows.*` with this interpreter.
    for key, first in (("PYTHONPATH", PROJECT_ROOT), ("PATH", BIN)):
        env[key] = os.pathsep.join(filter(None, [str(first), env.get(key)]))
    return env


def ready(info: ServiceInfo, *, server: ServiceInfo | None, pool: str, ray_dir: Path) -> bool:
    """Whether a started service answers (`server`: the Prefect server a worker polls)."""
    if info.name == "mlflow":
        return http(f"{info.url}/health")[0] == 200
    if info.name == "prefect-server":
        return http(f"{info.url}/api/health")[0] == 200
    if info.name == "prefect-worker":  # its healthcheck answers before it registers
        return (server is not None and http(f"{info.url}/health")[0] == 200
                and worker_name(pool, info.port) in pool_workers(server, pool))
    # Ray: GCS answers, and the raylet has opened its socket (drivers connect to it).
    raylet = ray_dir / "session_latest" / "sockets" / "raylet"
    return http(f"{info.url}/api/gcs_healthz")[0] == 200 and raylet.exists()
