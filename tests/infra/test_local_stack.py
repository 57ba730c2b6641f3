"""Real MLflow, Prefect and Ray servers on loopback, started and stopped by infra.stack.local_stack."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from infra.stack import local_stack as ls
from infra.stack import processes
from infra.stack.local_stack import PROJECT_ROOT, LocalStack, ServiceInfo, StackError

pytestmark = pytest.mark.integration


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read()


def _gone(pid: int) -> bool:
    """No such process, or only a zombie waiting for init to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def _write_stale_state(root: Path, name: str, pid: int, start: int | None) -> None:
    root.mkdir(parents=True, exist_ok=True)
    state = {"name": name, "url": "http://127.0.0.1:1", "pid": pid, "port": 1,
             "log": str(root / f"{name}.log"), "start": start}
    (root / f"{name}.json").write_text(json.dumps(state))
    (root / f"{name}.pid").write_text(f"{pid}\n")


def test_mlflow_server_records_a_metric_and_stores_its_artifact(
        mlflow_server: ServiceInfo, local_stack: LocalStack) -> None:
    from mlflow.tracking import MlflowClient

    assert _get(f"{mlflow_server.url}/health") == (200, b"OK")
    client = MlflowClient(tracking_uri=mlflow_server.url)
    run = client.create_run(client.create_experiment(f"stack-{uuid.uuid4().hex[:8]}"))
    client.log_metric(run.info.run_id, "accuracy", 0.75, step=3)
    client.log_text(run.info.run_id, "pruned 40% of heads", "notes/summary.txt")

    status, body = _get(f"{mlflow_server.url}/api/2.0/mlflow/metrics/get-history"
                        f"?run_id={run.info.run_id}&metric_key=accuracy")
    assert status == 200
    assert [(m["value"], m["step"]) for m in json.loads(body)["metrics"]] == [(0.75, 3)]
    # Served artifacts: the file lands in the stack's folder, not in the client's cwd.
    stored = list((local_stack.root / "artifacts").rglob("summary.txt"))
    assert [p.read_text() for p in stored] == ["pruned 40% of heads"]


def test_up_again_reuses_the_healthy_server(mlflow_server: ServiceInfo,
                                            local_stack: LocalStack) -> None:
    again = LocalStack(local_stack.root, mlflow_port=0)  # as a second `make up` would
    started = time.monotonic()
    info = again.up(["mlflow"])["mlflow"]
    # The session's server (test_step_metrics restarts it in place: same url, new pid).
    assert (info.pid, info.url) == (local_stack.status()["mlflow"].pid, mlflow_server.url)
    assert time.monotonic() - started < 5
    assert again.env()["MLFLOW_TRACKING_URI"] == mlflow_server.url


@pytest.mark.parametrize(("service", "kwarg", "variable"), [
    ("mlflow", "mlflow_port", "PRUNEGRID_MLFLOW_PORT"),
    ("prefect-server", "prefect_port", "PRUNEGRID_PREFECT_PORT"),
    ("ray", "ray_port", "PRUNEGRID_RAY_PORT"),
])
def test_busy_port_fails_naming_the_port_and_its_variable(
        tmp_path: Path, service: str, kwarg: str, variable: str) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        stack = LocalStack(tmp_path, **{kwarg: port})
        with pytest.raises(StackError, match=rf"port {port}\b.*{variable}"):
            stack.up([service])
    assert stack.status()[service] is None
    assert not (tmp_path / f"{service}.pid").exists()


def test_files_of_a_dead_process_read_as_down_and_are_cleaned(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    _write_stale_state(tmp_path, "mlflow", dead.pid, start=None)
    stack = LocalStack(tmp_path)
    assert stack.status()["mlflow"] is None
    assert "MLFLOW_TRACKING_URI" not in stack.env()
    stack.down()
    assert not (tmp_path / "mlflow.pid").exists() and not (tmp_path / "mlflow.json").exists()


def test_cli_up_replaces_a_stale_pid_outlives_the_cli_and_down_leaves_nothing(
        tmp_path: Path) -> None:
    home = tmp_path / "home"
    root = home / "stack"
    # The stale pid now belongs to an unrelated process: it must be neither reused nor killed.
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        _write_stale_state(root, "mlflow", bystander.pid, start=1)
        env = {**os.environ, "PRUNEGRID_HOME": str(home), "PRUNEGRID_MLFLOW_PORT": "0"}

        def cli(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "infra.stack.local_stack", *args],
                                  cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                                  timeout=300)

        up = cli("up")
        assert up.returncode == 0, up.stderr
        info = LocalStack(root).status()["mlflow"]
        assert info is not None and info.pid != bystander.pid
        assert info.url in up.stdout
        assert _get(f"{info.url}/health")[0] == 200  # still serving after the CLI exited
        assert cli("url", "mlflow").stdout.strip() == info.url

        down = cli("down")
        assert down.returncode == 0, down.stderr
        assert _gone(info.pid) and processes.group_members(info.pid) == []
        assert not (root / "mlflow.pid").exists()
        assert "mlflow          down" in cli("status").stdout
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def _groups_mentioning(text: str) -> set[int]:
    """Process groups with a live member whose command line holds `text`."""
    groups = set()
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, IndexError):
            if entry.name.isdigit() and text in (entry / "cmdline").read_text(errors="replace"):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if fields[0] not in ("Z", "X"):
                    groups.add(int(fields[2]))
    return groups


def test_two_ups_at_once_leave_one_server(tmp_path: Path) -> None:
    """Two `make up` started together: each would find no server and start its own."""
    home, go = tmp_path / "home", tmp_path / "go"
    env = {**os.environ, "PRUNEGRID_HOME": str(home), "PRUNEGRID_MLFLOW_PORT": "0"}
    # Each imports first, then waits for the same moment to run `up`.
    code = ("import pathlib, sys, time\nfrom infra.stack import local_stack\nprint('ready', flush=True)\n"
            f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.002)\n"
            "sys.exit(local_stack.main(['up']))\n")
    ups = [subprocess.Popen([sys.executable, "-c", code], cwd=PROJECT_ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    try:
        assert all(up.stdout is not None and up.stdout.readline().strip() == "ready" for up in ups)
        go.touch()
        done = [up.communicate(timeout=300) for up in ups]
        assert [up.returncode for up in ups] == [0, 0], done
        pids = {int(line.split("(pid ")[1].split(",")[0]) for out, _ in done for line in out.splitlines()
                if line.startswith("mlflow")}
        assert len(pids) == 1, done  # the second `up` reused the first one's server
        assert _groups_mentioning(str(home / "stack")) == pids  # and started none of its own
    finally:
        LocalStack(home / "stack").down()
        for group in _groups_mentioning(str(home / "stack")):
            processes.stop_group(group, 5.0)


def test_prefect_server_and_worker_come_up_show_in_status_and_stop_worker_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    pool = f"pg-test-{uuid.uuid4().hex[:6]}"
    stack = LocalStack(tmp_path / "stack", prefect_port=0, pool=pool, ready_timeout_s=180)
    # As under `make up &` or nohup: the children would inherit an ignored SIGINT, and a
    # Prefect worker turns SIGTERM into SIGINT, so it would never stop.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        try:
            infos = stack.up(["prefect-worker"])  # brings up its server first
        finally:
            signal.signal(signal.SIGINT, previous)
        server, worker = infos["prefect-server"], infos["prefect-worker"]
        assert _get(f"{server.url}/api/health")[0] == 200
        status, body = _get(f"{server.url}/api/work_pools/{pool}")
        assert status == 200 and json.loads(body)["type"] == "process"
        assert stack.up(["prefect-worker"])["prefect-worker"].pid == worker.pid

        monkeypatch.setenv("PRUNEGRID_HOME", str(tmp_path))  # the CLI finds the same folder
        assert ls.main(["status"]) == 0
        shown = capsys.readouterr().out
        assert f"prefect-server  up    {server.url}" in shown
        assert f"prefect-worker  up    {worker.url}" in shown
        assert ls.main(["env"]) == 0
        assert f"export PREFECT_API_URL={server.url}/api" in capsys.readouterr().out

        stopped: list[int] = []
        real_stop = processes.stop_group
        monkeypatch.setattr(processes, "stop_group", lambda pgid, *args, **kwargs: (
            stopped.append(pgid), real_stop(pgid, *args, **kwargs)))
        stack.down()
        assert stopped == [worker.pid, server.pid]
        assert _gone(worker.pid) and _gone(server.pid)
        assert "stopped!" in worker.log.read_text()  # it shut down on SIGTERM, not SIGKILL
        assert stack.status() == {name: None for name in ls.SERVICES}
    finally:
        stack.down()


_LOOPBACK_HEX = {"0100007F", "0000000000000000FFFF00000100007F",  # 127.0.0.1 (v4, v4-in-v6)
                 "00000000000000000000000001000000"}  # ::1


def _listening_addresses(pids: list[int]) -> set[str]:
    """Local addresses (as /proc/net/tcp* writes them) of the TCP sockets `pids` listen on."""
    inodes = set()
    for pid in pids:
        with_fds = Path(f"/proc/{pid}/fd")
        for fd in with_fds.iterdir() if with_fds.exists() else []:
            with contextlib.suppress(OSError):
                if (target := os.readlink(fd)).startswith("socket:["):
                    inodes.add(target[8:-1])
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                addresses.add(fields[1].rsplit(":", 1)[0])
    return addresses


def test_ray_head_listens_on_loopback_only_and_serves_a_driver(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path / "stack", ray_port=0, ray_dashboard_port=0, ray_cpus=1,
                       ready_timeout_s=180)
    try:
        info = stack.up(["ray"])["ray"]
        addresses = _listening_addresses(processes.group_members(info.pid))
        assert addresses and addresses <= _LOOPBACK_HEX, addresses
        assert stack.ray_token.stat().st_mode & 0o777 == 0o600
        # The dashboard answers 503 while one of its GCS health probes is late (a busy
        # machine): healthy means it answers 200 again within seconds.
        deadline = time.monotonic() + 30
        while processes.http(f"{info.url}/api/gcs_healthz")[0] != 200:
            assert time.monotonic() < deadline, "the Ray dashboard did not report GCS healthy"
            time.sleep(0.5)

        # A driver joins with only what `env` exports (address, token, loopback mode).
        driver = subprocess.run(
            [sys.executable, "-c",
             "import ray; ray.init(); print(ray.get(ray.remote(lambda: 6 * 7).remote()))"],
            env={**os.environ, **stack.env()}, cwd=tmp_path, capture_output=True, text=True,
            timeout=180)
        assert driver.stdout.split()[-1:] == ["42"], driver.stderr[-3000:]

        stack.down(["ray"])
        assert _gone(info.pid) and processes.group_members(info.pid) == []
        assert not stack.ray_tmp.exists()
    finally:
        stack.down()
