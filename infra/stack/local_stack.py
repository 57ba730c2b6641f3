"""Local servers on loopback: MLflow, Prefect server and worker, optionally a Ray head.

Used by `make up/down/ui/demo` and the integration tests. Each service keeps three files in
the stack folder (default `<PRUNEGRID_HOME>/stack/`): `<name>.pid`, `<name>.log` and
`<name>.json` (port, url, pid, process start time). Services run in their own session so they
outlive the command that started them, and are stopped as a whole process group.
Starts and stops of one folder take turns (an flock on `stack.lock`), so two `make up` at once
leave one server of each kind.
How a process is started and stopped: infra.stack.processes; what each service runs and
when it is ready: infra.stack.services.

    python -m infra.stack.local_stack up --services mlflow,prefect-server,prefect-worker[,ray]
    python -m infra.stack.local_stack status | down | env      # eval "$(... env)" in a shell
    python -m infra.stack.local_stack url mlflow                # prints the URL; fails if down
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shlex
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from infra.experiment import paths
from infra.experiment.settings import Settings
from infra.stack import processes, services
from infra.stack.processes import HOST, ServiceInfo, StackError, StateFiles
from infra.stack.services import PROJECT_ROOT

__all__ = ["PROJECT_ROOT", "SERVICES", "LocalStack", "ServiceInfo", "StackError", "main"]

SERVICES = ("mlflow", "prefect-server", "prefect-worker", "ray")  # start order
STOP_ORDER = ("prefect-worker", "prefect-server", "mlflow", "ray")  # worker before its server
PORT_ENV = {"mlflow": "PRUNEGRID_MLFLOW_PORT", "prefect-server": "PRUNEGRID_PREFECT_PORT",
            "ray": "PRUNEGRID_RAY_PORT", "ray-dashboard": "PRUNEGRID_RAY_DASHBOARD_PORT"}
PORT_ARG = {"mlflow": "mlflow_port", "prefect-server": "prefect_port", "ray": "ray_port",
            "ray-dashboard": "ray_dashboard_port"}
CLI = "python -m infra.stack.local_stack"


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
        self.files = StateFiles(self.root)

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
        return cls(paths.stack_dir(settings.home), allow_hub=settings.allow_hub, **{**kwargs, **overrides})

    # ---- public API -------------------------------------------------------------------

    @property
    def prefect_home(self) -> Path:
        return self.root / "prefect"

    @property
    def ray_token(self) -> Path:
        return services.ray_token(self.root)

    @property
    def ray_tmp(self) -> Path:
        """The Ray head's session folder (sockets and logs); removed when Ray stops."""
        return services.ray_tmp(self.root)

    def up(self, names: Sequence[str] = ("mlflow",)) -> dict[str, ServiceInfo]:
        """Start the named services (reusing healthy ones); return them once they answer."""
        wanted = set(_check_names(names))
        if "prefect-worker" in wanted:
            wanted.add("prefect-server")  # a worker needs its server
        with self._one_at_a_time():
            return {name: self._up_one(name) for name in SERVICES if name in wanted}

    def down(self, names: Sequence[str] | None = None) -> None:
        """Stop the named services (None: all), worker before server, and remove their files."""
        wanted = SERVICES if names is None else _check_names(names)
        with self._one_at_a_time():
            for name in STOP_ORDER:
                if name in wanted:
                    self._down_one(name)

    def status(self) -> dict[str, ServiceInfo | None]:
        """Each service's info while its process is alive, else None."""
        return {name: self.files.running(name) for name in SERVICES}

    def env(self) -> dict[str, str]:
        """Variables a client needs to talk to the running services."""
        running, env = self.status(), {}
        if mlflow := running["mlflow"]:
            env["MLFLOW_TRACKING_URI"] = mlflow.url
        if prefect := running["prefect-server"]:
            env |= {"PREFECT_API_URL": f"{prefect.url}/api", "PREFECT_HOME": str(self.prefect_home)}
        if ray := running["ray"]:
            env |= services.ray_client_env(ray.port, self.ray_token)
        return env

    @contextlib.contextmanager
    def _one_at_a_time(self) -> Iterator[None]:
        """Two `up`s (or an `up` and a `down`) of one stack folder at once take turns: each would
        find no server and start its own, so the second waits, then finds and reuses the first's.
        An flock: the kernel drops it when its holder exits, however it exits."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / "stack.lock", os.O_RDWR | os.O_CREAT, 0o644)  # servers don't inherit it
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # ---- one service ------------------------------------------------------------------

    def _up_one(self, name: str) -> ServiceInfo:
        info = self.files.running(name)
        if info is not None:  # alive: reuse it once it answers (it may still be starting)
            self._wait_ready(info)
            return info
        self._down_one(name)  # stale or absent: drop what an earlier process left
        self.root.mkdir(parents=True, exist_ok=True)
        if name == "prefect-worker":
            services.ensure_pool(self._server(), self.pool, self._service_env("prefect-server"),
                                 self.root)
        argv, url, port = self._command(name)
        log = self.files.log(name)
        pid = processes.spawn(argv, log, self._service_env(name),
                              cwd=PROJECT_ROOT if name == "prefect-worker" else self.root)
        info = ServiceInfo(name=name, url=url, pid=pid, port=port, log=log)
        self.files.write(info)
        try:
            self._wait_ready(info)
        except BaseException:
            self._down_one(name)
            raise
        return info

    def _down_one(self, name: str) -> None:
        if state := self.files.read(name):
            # `ray start` drains its node through the GCS before stopping its children:
            # SIGTERM to the whole group kills the GCS first and leaves it waiting.
            processes.stop_recorded(state, self.stop_grace_s, leader_first=name == "ray")
        self.files.clear(name)
        if name == "ray":  # its sessions' sockets and logs
            shutil.rmtree(self.ray_tmp, ignore_errors=True)

    def _server(self) -> ServiceInfo:
        """The running Prefect server a worker needs."""
        if (server := self.files.running("prefect-server")) is None:
            raise StackError("prefect-worker needs prefect-server: `up` them together")
        return server

    def _command(self, name: str) -> tuple[list[str], str, int]:
        """(argv, url, port) of a service, its ports picked now."""
        port = self._port(name)
        if name == "mlflow":
            return services.mlflow_command(self.root, port, self.mlflow_workers), services.url(port), port
        if name == "prefect-server":
            return services.prefect_server_command(port), services.url(port), port
        if name == "prefect-worker":
            return services.prefect_worker_command(self.pool, port), services.url(port), port
        dashboard = self._port("ray-dashboard")
        argv = services.ray_command(self.root, port, dashboard, self.ray_cpus)
        return argv, services.url(dashboard), port

    def _service_env(self, name: str) -> dict[str, str]:
        env = services.base_env(self.prefect_home, self.allow_hub)
        if name == "prefect-server":
            env["PREFECT_API_URL"] = f"{services.url(self.ports[name])}/api"
        elif name == "prefect-worker":
            # Its flow runs use this stack's MLflow (and Ray) when they run, unless told otherwise.
            env = self.env() | env
            env |= services.worker_env(self._server(), self.ports[name])
            env.setdefault("PRUNEGRID_ROOT", str(PROJECT_ROOT))  # prefect.yaml's pull step
        elif name == "ray":
            env |= services.prepare_ray(self.root)
        return env

    def _port(self, name: str) -> int:
        port = self.ports[name]
        if port == 0:
            port = processes.free_port()
        elif not processes.port_free(port):
            fix = f"set {PORT_ENV[name]} to a free port (0 picks one)"
            raise StackError(f"{name}: port {port} on {HOST} is already in use; {fix}, "
                             "or stop what listens there")
        self.ports[name] = port
        return port

    def _wait_ready(self, info: ServiceInfo) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while not services.ready(info, server=self.files.running("prefect-server"),
                                 pool=self.pool, ray_dir=self.ray_tmp):
            if not processes.alive(info.pid):
                raise StackError(f"{info.name} exited before it was ready; "
                                 f"log {info.log}:\n{processes.tail(info.log)}")
            if time.monotonic() > deadline:
                raise StackError(f"{info.name} did not answer at {info.url} within "
                                 f"{self.ready_timeout_s:.0f} s (pid {info.pid}; `{CLI} down "
                                 f"--services {info.name}` stops it); "
                                 f"log {info.log}:\n{processes.tail(info.log)}")
            time.sleep(0.25)


def _check_names(names: Sequence[str]) -> list[str]:
    if unknown := [s for s in names if s not in SERVICES]:
        raise StackError(f"unknown service(s) {unknown}; choose from {', '.join(SERVICES)}")
    return list(names)


# ---- CLI ----------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=CLI, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("up", "down", "status", "env", "url"))
    parser.add_argument("service", nargs="?", choices=SERVICES, help="for `url`")
    parser.add_argument("--services", help=f"comma-separated, from {','.join(SERVICES)} "
                                           "(up: mlflow; down: all)")
    parser.add_argument("--pool", default=os.environ.get("PRUNEGRID_WORK_POOL",
                                                         "prunegrid-process"))
    args = parser.parse_args(argv)
    names = [s.strip() for s in (args.services or "").split(",") if s.strip()] or None
    try:
        _run(args.command, LocalStack.from_env(pool=args.pool), names, args.service)
    except StackError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def _run(command: str, stack: LocalStack, names: list[str] | None, service: str | None) -> None:
    """One CLI command; prints what the user reads."""
    if command == "up":
        for info in stack.up(names or ("mlflow",)).values():
            print(f"{info.name:<15} up    {info.url}  (pid {info.pid}, log {info.log})")
    elif command == "down":
        stack.down(names)
        print(f"stopped: {', '.join(names or SERVICES)}")
    elif command == "status":
        for name, info in stack.status().items():
            print(f"{name:<15} " + (f"up    {info.url}  (pid {info.pid})" if info else "down"))
    elif command == "env":
        for key, value in stack.env().items():
            print(f"export {key}={shlex.quote(value)}")
    elif (info := stack.status()[name := service or "mlflow"]) is not None:
        print(info.url)
    else:
        raise StackError(f"{name} is not running; start it with `{CLI} up --services {name}`")


if __name__ == "__main__":
    sys.exit(main())
