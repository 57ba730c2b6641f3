"""Local servers on loopback: MLflow, Prefect server and worker, optionally a Ray head.

Used by `make up/down/ui/demo` and the integration tests. Each service keeps three files in
the stack folder (default `<PRUNEGRID_HOME>/stack/`): `<name>.pid`, `<name>.log` and
`<name>.json` (port, url, pid, process start time). Services run in their own session so they
outlive the command that started them, and are stopped as a whole process group.

    python -m infra.stack.local_stack up --services mlflow,prefect-server,prefect-worker[,ray]
    python -m infra.stack.local_stack status | down | env      # eval "$(... env)" in a shell
    python -m infra.stack.local_stack url mlflow                # prints the URL; fails if down
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from infra.experiment.settings import OFFLINE_ENV, Settings

HOST = "127.0.0.1"
SERVICES = ("mlflow", "prefect-server", "prefect-worker", "ray")  # start order
STOP_ORDER = ("prefect-worker", "prefect-server", "mlflow", "ray")  # worker before its server
PORT_ENV = {"mlflow": "PRUNEGRID_MLFLOW_PORT", "prefect-server": "PRUNEGRID_PREFECT_PORT",
            "ray": "PRUNEGRID_RAY_PORT", "ray-dashboard": "PRUNEGRID_RAY_DASHBOARD_PORT"}
PORT_ARG = {"mlflow": "mlflow_port", "prefect-server": "prefect_port", "ray": "ray_port",
            "ray-dashboard": "ray_dashboard_port"}
PROJECT_ROOT = Path(__file__).resolve().parents[2]
HUB_KEYS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


class StackError(RuntimeError):
    """A local service could not be started or stopped; the message names the fix."""


@dataclass(frozen=True)
class ServiceInfo:
    name: str
    url: str  # what a browser or client opens (Ray: its dashboard)
    pid: int  # also the process group id
    port: int  # the port clients connect to (Ray: the GCS port of RAY_ADDRESS)
    log: Path


class LocalStack:
    """Start, inspect and stop the local servers whose files live under `root`.

    A port of 0 picks a free loopback port; any other port must be free.
    """

    def __init__(self, root: Path, *, mlflow_port: int = 5000, prefect_port: int = 4200,
                 pool: str = "prunegrid-process", ray_port: int = 6379,
                 ray_dashboard_port: int = 8265, ray_cpus: int | None = None,
                 mlflow_workers: int = 1, allow_hub: bool = False,
                 ready_timeout_s: float = 120.0, stop_grace_s: float = 10.0) -> None:
        self.root = Path(root).resolve()
        self.ports = {"mlflow": mlflow_port, "prefect-server": prefect_port, "ray": ray_port,
                      "ray-dashboard": ray_dashboard_port, "prefect-worker": 0}
        self.pool = pool
        self.ray_cpus = ray_cpus if ray_cpus is not None else os.cpu_count() or 1
        self.mlflow_workers = mlflow_workers  # its handlers run in threads; 1 process suffices
        self.allow_hub = allow_hub
        self.ready_timeout_s = ready_timeout_s
        self.stop_grace_s = stop_grace_s

    @classmethod
    def from_env(cls, settings: Settings | None = None, **overrides) -> "LocalStack":
        """The stack in `<PRUNEGRID_HOME>/stack`, ports from the PRUNEGRID_*_PORT variables."""
        settings = settings or Settings.from_env()
        kwargs = {}
        for service, variable in PORT_ENV.items():
            if raw := os.environ.get(variable):
                if not raw.isdigit():
                    raise StackError(f"{variable}={raw!r} is not a port number")
                kwargs[PORT_ARG[service]] = int(raw)
        return cls(settings.stack_dir, allow_hub=settings.allow_hub, **{**kwargs, **overrides})

    # ---- public API -------------------------------------------------------------------

    @property
    def prefect_home(self) -> Path:
        return self.root / "prefect"

    @property
    def ray_token(self) -> Path:
        return self.root / "ray" / ".ray" / "auth_token"

    def up(self, services: Sequence[str] = ("mlflow",)) -> dict[str, ServiceInfo]:
        """Start the named services (reusing healthy ones); return them once they answer."""
        wanted = set(_check_names(services))
        if "prefect-worker" in wanted:
            wanted.add("prefect-server")  # a worker needs its server
        return {name: self._up_one(name) for name in SERVICES if name in wanted}

    def down(self, services: Sequence[str] | None = None) -> None:
        """Stop the named services (None: all), worker before server, and remove their files."""
        wanted = SERVICES if services is None else _check_names(services)
        for name in STOP_ORDER:
            if name in wanted:
                self._down_one(name)

    def status(self) -> dict[str, ServiceInfo | None]:
        """Each service's info while its process is alive, else None."""
        return {name: self._running(name) for name in SERVICES}

    def env(self) -> dict[str, str]:
        """Variables a client needs to talk to the running services."""
        running, env = self.status(), {}
        if mlflow := running["mlflow"]:
            env["MLFLOW_TRACKING_URI"] = mlflow.url
        if prefect := running["prefect-server"]:
            env |= {"PREFECT_API_URL": f"{prefect.url}/api", "PREFECT_HOME": str(self.prefect_home)}
        if ray := running["ray"]:
            env |= {"RAY_ADDRESS": f"{HOST}:{ray.port}", "RAY_AUTH_MODE": "token",
                    "RAY_AUTH_TOKEN_PATH": str(self.ray_token),
                    # Keeps a joining driver on 127.0.0.1 too (else it looks for the
                    # cluster at the machine's outward address).
                    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
        return env

    # ---- one service ------------------------------------------------------------------

    def _up_one(self, name: str) -> ServiceInfo:
        info = self._running(name)
        if info is not None:  # alive: reuse it once it answers (it may still be starting)
            self._wait_ready(info)
            return info
        self._down_one(name)  # stale or absent: drop what an earlier process left
        self.root.mkdir(parents=True, exist_ok=True)
        if name == "prefect-worker":
            self._ensure_pool()
        argv, url, port = self._command(name)
        log = self.root / f"{name}.log"
        with open(log, "ab") as out, _sigint_not_ignored():
            out.write(f"\n=== {time.strftime('%F %T')} {shlex.join(argv)}\n".encode())
            out.flush()
            proc = subprocess.Popen(  # own session: outlives us, stopped as one group
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self._service_env(name),
                cwd=PROJECT_ROOT if name == "prefect-worker" else self.root,
                start_new_session=True)
        _CHILDREN[proc.pid] = proc
        info = ServiceInfo(name=name, url=url, pid=proc.pid, port=port, log=log)
        self._write_state(info)
        try:
            self._wait_ready(info)
        except BaseException:
            self._down_one(name)
            raise
        return info

    def _down_one(self, name: str) -> None:
        if state := self._state(name):
            pid = state["pid"]
            # Ours: the recorded leader (same start time), or, with the leader gone, what is
            # left of its group (a live group keeps its id from being reused as a pid).
            if _start_time(pid) == state.get("start") or (not _stat(pid) and group_members(pid)):
                # `ray start` drains its node through the GCS before stopping its children:
                # SIGTERM to the whole group kills the GCS first and leaves it waiting.
                _stop_group(pid, self.stop_grace_s, leader_first=name == "ray")
        self._clear(name)
        if name == "ray":  # its sessions' sockets and logs
            shutil.rmtree(self._ray_tmp(), ignore_errors=True)

    def _state(self, name: str) -> dict | None:
        try:
            return json.loads((self.root / f"{name}.json").read_text())
        except (OSError, ValueError):
            return None

    def _running(self, name: str) -> ServiceInfo | None:
        """The recorded process, if it is alive and not a stranger that reused its pid."""
        state = self._state(name)
        if state is None:
            return None
        pid = state["pid"]
        if not _alive(pid) or state.get("start") != _start_time(pid):
            return None
        return ServiceInfo(name=name, url=state["url"], pid=pid, port=state["port"],
                           log=self.root / f"{name}.log")

    # ---- commands and environment -----------------------------------------------------

    def _command(self, name: str) -> tuple[list[str], str, int]:
        bindir = Path(sys.executable).parent
        port = self._port(name)
        url = f"http://{HOST}:{port}"
        if name == "mlflow":
            return [str(bindir / "mlflow"), "server",
                    "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                    "--artifacts-destination", (self.root / "artifacts").as_uri(),
                    "--host", HOST, "--port", str(port),
                    "--workers", str(self.mlflow_workers)], url, port
        if name == "prefect-server":
            return [str(bindir / "prefect"), "server", "start", "--host", HOST,
                    "--port", str(port), "--analytics-off"], url, port
        if name == "prefect-worker":  # never pip-installs a worker package, never prompts
            return [str(bindir / "prefect"), "worker", "start", "--pool", self.pool,
                    "--type", "process", "--name", self._worker_name(port),
                    "--with-healthcheck", "--install-policy", "never", "--no-prompt"], url, port
        dashboard = self._port("ray-dashboard")
        return [str(bindir / "ray"), "start", "--head", "--block", "--node-ip-address", HOST,
                "--port", str(port), "--num-cpus", str(self.ray_cpus),
                "--include-dashboard", "true", "--dashboard-host", HOST,
                "--dashboard-port", str(dashboard), "--disable-usage-stats",
                "--temp-dir", str(self._ray_tmp())], f"http://{HOST}:{dashboard}", port

    def _service_env(self, name: str) -> dict[str, str]:
        env = dict(os.environ)
        env |= {k: v for k, v in OFFLINE_ENV.items() if not (self.allow_hub and k in HUB_KEYS)}
        env.pop("PREFECT_API_KEY", None)  # these servers are local: never send a cloud key
        env["PREFECT_HOME"] = str(self.prefect_home)
        # MLflow's job runner (GenAI judges, periodic jobs) is unused here; without it the
        # server is 2 processes instead of 9 and leaves no temp folder in /dev/shm.
        env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        # Flow runs of a process worker import `flows.*` with this interpreter.
        for key, first in (("PYTHONPATH", PROJECT_ROOT), ("PATH", Path(sys.executable).parent)):
            env[key] = os.pathsep.join(filter(None, [str(first), env.get(key)]))
        if name == "prefect-server":
            env["PREFECT_API_URL"] = f"http://{HOST}:{self.ports[name]}/api"
        elif name == "prefect-worker":
            # Its flow runs use this stack's MLflow (and Ray) when they run, unless told otherwise.
            env = self.env() | env
            env["PREFECT_API_URL"] = f"{self._running('prefect-server').url}/api"
            env.setdefault("PRUNEGRID_ROOT", str(PROJECT_ROOT))  # prefect.yaml's pull step
            env["PREFECT_WORKER_WEBSERVER_HOST"] = HOST
            env["PREFECT_WORKER_WEBSERVER_PORT"] = str(self.ports[name])
        elif name == "ray":
            env |= self._prepare_ray()
        return env

    def _prepare_ray(self) -> dict[str, str]:
        """Files and variables that keep the Ray head on loopback, behind a token, and quiet.

        Ray maps 127.0.0.1 to the machine's outward address and listens on all interfaces
        unless in its single-machine mode; `ray start` leaves token auth off unless asked,
        and then needs the token to exist; its dashboard asks cloud-metadata hosts which
        cloud it runs on unless `~/ray_bootstrap_config.yaml` says `provider: local`, so the
        Ray processes get a home of their own in the stack folder that holds that file.
        """
        home = self.root / "ray"
        home.mkdir(parents=True, exist_ok=True)
        (home / "ray_bootstrap_config.yaml").write_text("provider:\n  type: local\n")
        if not self.ray_token.exists():
            self.ray_token.parent.mkdir(mode=0o700, exist_ok=True)
            fd = os.open(self.ray_token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as token:
                token.write(secrets.token_hex(32))  # as `ray get-auth-token --generate`
        return {"HOME": str(home), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.ray_token)}

    def _ray_tmp(self) -> Path:
        # Ray's unix socket paths must stay under ~107 bytes: a short folder per stack.
        return Path("/tmp") / f"pg-ray-{hashlib.sha1(str(self.root).encode()).hexdigest()[:8]}"

    def _port(self, name: str) -> int:
        port = self.ports[name]
        if port == 0:
            port = _free_port()
        elif not _port_free(port):
            fix = f"set {PORT_ENV[name]} to a free port (0 picks one)"
            raise StackError(f"{name}: port {port} on {HOST} is already in use; {fix}, "
                             "or stop what listens there")
        self.ports[name] = port
        return port

    def _ensure_pool(self) -> None:
        """Create the process work pool unless the server already has it."""
        server = self._running("prefect-server")
        if server is None:
            raise StackError("prefect-worker needs prefect-server: `up` them together")
        pool_url = f"{server.url}/api/work_pools/{self.pool}"
        if _http(pool_url)[0] == 200:
            return
        done = subprocess.run(
            [str(Path(sys.executable).parent / "prefect"), "work-pool", "create", self.pool,
             "--type", "process"], env=self._service_env("prefect-server") | {
                "PREFECT_API_URL": f"{server.url}/api"},
            cwd=self.root, capture_output=True, text=True)
        if _http(pool_url)[0] != 200:  # a concurrent create may have won: check, not rc
            raise StackError(f"could not create work pool {self.pool!r}:\n"
                             f"{done.stdout}{done.stderr}")

    def _pool_workers(self, server_url: str) -> list[str]:
        status, body = _http(f"{server_url}/api/work_pools/{self.pool}/workers/filter", {})
        return [worker["name"] for worker in json.loads(body)] if status == 200 else []

    def _worker_name(self, port: int) -> str:
        # Unique per start (so is its healthcheck port): readiness waits for this very worker.
        return f"prunegrid-{self.pool}-{port}"

    # ---- readiness --------------------------------------------------------------------

    def _ready(self, info: ServiceInfo) -> bool:
        if info.name == "mlflow":
            return _http(f"{info.url}/health")[0] == 200
        if info.name == "prefect-server":
            return _http(f"{info.url}/api/health")[0] == 200
        if info.name == "prefect-worker":  # its healthcheck answers before it registers
            server = self._running("prefect-server")
            return (server is not None and _http(f"{info.url}/health")[0] == 200
                    and self._worker_name(info.port) in self._pool_workers(server.url))
        # Ray: GCS answers, and the raylet has opened its socket (drivers connect to it).
        raylet = self._ray_tmp() / "session_latest" / "sockets" / "raylet"
        return _http(f"{info.url}/api/gcs_healthz")[0] == 200 and raylet.exists()

    def _wait_ready(self, info: ServiceInfo) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while not self._ready(info):
            if not _alive(info.pid):
                raise StackError(f"{info.name} exited before it was ready; "
                                 f"log {info.log}:\n{_tail(info.log)}")
            if time.monotonic() > deadline:
                raise StackError(f"{info.name} did not answer at {info.url} within "
                                 f"{self.ready_timeout_s:.0f} s (pid {info.pid}; `python -m "
                                 f"infra.stack.local_stack down --services {info.name}` stops it); "
                                 f"log {info.log}:\n{_tail(info.log)}")
            time.sleep(0.25)

    # ---- files ------------------------------------------------------------------------

    def _write_state(self, info: ServiceInfo) -> None:
        state = {"name": info.name, "url": info.url, "pid": info.pid, "port": info.port,
                 "log": str(info.log), "start": _start_time(info.pid)}
        _write_atomic(self.root / f"{info.name}.json", json.dumps(state, indent=2) + "\n")
        _write_atomic(self.root / f"{info.name}.pid", f"{info.pid}\n")

    def _clear(self, name: str) -> None:
        for suffix in ("pid", "json"):
            (self.root / f"{name}.{suffix}").unlink(missing_ok=True)


# ---- processes ----------------------------------------------------------------------

# Services this interpreter started, so that their exit is reaped (no zombie looks alive).
_CHILDREN: dict[int, subprocess.Popen] = {}


def _stat(pid: int) -> list[str]:
    """/proc/<pid>/stat fields from field 3 (state) on; [] if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return raw[raw.rindex(")") + 2:].split()


def _alive(pid: int) -> bool:
    if (proc := _CHILDREN.get(pid)) is not None:
        return proc.poll() is None
    fields = _stat(pid)
    return bool(fields) and fields[0] not in ("Z", "X")


def _start_time(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[19]) if fields else None  # field 22: start, in clock ticks since boot


def group_members(pgid: int) -> list[int]:
    """Live processes (zombies excluded) in process group `pgid`."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))):
            if fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
                members.append(int(entry.name))
    return members


def _stop_group(pgid: int, grace_s: float, leader_first: bool = False) -> None:
    """SIGTERM the group (or only its leader), SIGKILL what is left after `grace_s`, reap."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            if leader_first and sig == signal.SIGTERM and _alive(pgid):
                os.kill(pgid, sig)
            else:
                os.killpg(pgid, sig)
        deadline = time.monotonic() + wait_s
        while (_alive(pgid) or group_members(pgid)) and time.monotonic() < deadline:
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

def _http(url: str, body: dict | None = None, timeout: float = 2.0) -> tuple[int | None, bytes]:
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _check_names(services: Sequence[str]) -> list[str]:
    if unknown := [s for s in services if s not in SERVICES]:
        raise StackError(f"unknown service(s) {unknown}; choose from {', '.join(SERVICES)}")
    return list(services)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "    (no log)"
    return "\n".join("    " + line for line in text[-lines:])


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


# ---- CLI ----------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.stack.local_stack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("up", "down", "status", "env", "url"))
    parser.add_argument("service", nargs="?", choices=SERVICES, help="for `url`")
    parser.add_argument("--services", help=f"comma-separated, from {','.join(SERVICES)} "
                                           "(up: mlflow; down: all)")
    parser.add_argument("--pool", default=os.environ.get("PRUNEGRID_WORK_POOL",
                                                         "prunegrid-process"))
    args = parser.parse_args(argv)
    services = [s.strip() for s in (args.services or "").split(",") if s.strip()] or None
    try:
        stack = LocalStack.from_env(pool=args.pool)
        if args.command == "up":
            for info in stack.up(services or ("mlflow",)).values():
                print(f"{info.name:<15} up    {info.url}  (pid {info.pid}, log {info.log})")
        elif args.command == "down":
            stack.down(services)
            print(f"stopped: {', '.join(services or SERVICES)}")
        elif args.command == "status":
            for name, info in stack.status().items():
                print(f"{name:<15} " + (f"up    {info.url}  (pid {info.pid})" if info else "down"))
        elif args.command == "env":
            for key, value in stack.env().items():
                print(f"export {key}={shlex.quote(value)}")
        elif (info := stack.status()[name := args.service or "mlflow"]) is not None:
            print(info.url)
        else:
            raise StackError(f"{name} is not running; start it with "
                             f"`python -m infra.stack.local_stack up --services {name}`")
    except StackError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
