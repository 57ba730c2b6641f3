"""A grid on an existing Ray cluster (RAY_ADDRESS), its driver killed mid-grid, then rerun.

A head and a worker node are started with `ray start` on loopback, as a user would on
their machines. The driver is killed (the whole process group, as a lost machine would)
after the teacher has finished and while the grid's job is running.
Running the same experiment again skips the finished jobs (Prefect cache), resumes the
unfinished one from its last Ray checkpoint, and closes the interrupted MLflow runs.
A third run with nothing changed completes from the cache without training anything.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from infra.experiment.config import load_config
from infra.experiment.grid import expand_grid, teacher_job
from infra.track.tracking import client
from tests.integration.helpers import ROOT, TINY, flow_env, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _kill_cluster(port: int, temp: Path) -> None:
    marks = (f"127.0.0.1:{port}", f"gcs_server_port={port}", str(temp))
    for pid in os.listdir("/proc"):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if pid.isdigit() and int(pid) != os.getpid() and any(m in cmdline for m in marks):
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def ray_cluster():
    """`ray start` head (no CPUs) + one worker node with 2 CPUs, both on 127.0.0.1, token auth
    on (as infra/stack/ray/cluster.yaml sets it up); yields what a driver needs in its environment."""
    port = free_port()
    temp = Path(tempfile.mkdtemp(prefix="pgx-", dir="/tmp"))  # unix socket paths stay short
    token = temp / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"} | auth
    ray = [sys.executable, "-m", "ray.scripts.scripts", "start", "--node-ip-address=127.0.0.1",
           "--disable-usage-stats"]
    try:
        subprocess.run([*ray, "--head", f"--port={port}", "--num-cpus=0", "--include-dashboard=false",
                        f"--temp-dir={temp}"], env=env, check=True, capture_output=True, timeout=180)
        subprocess.run([*ray, f"--address=127.0.0.1:{port}", "--num-cpus=2"], env=env, check=True,
                       capture_output=True, timeout=180)
        # The driver stays on loopback when it joins (infra.stack.local_stack sets the same).
        yield auth | {"RAY_ADDRESS": f"127.0.0.1:{port}", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    finally:
        _kill_cluster(port, temp)


def _config(tmp_path: Path) -> Path:
    data = yaml.safe_load(TINY.read_text())
    data["name"] = "resume"
    data["registry"]["model_name"] = "resume-{task}"
    data["tasks"][0]["path"] = str(ROOT / data["tasks"][0]["path"])
    data["prune"].update(epochs=20, checkpoint_every=10)  # 120 steps: time to kill it mid-job
    data["grid"]["sparsities"] = [0.5]  # the teacher finishes, this job is interrupted
    data["compute"]["cpus_per_worker"] = 2  # one job at a time on the 2-CPU node
    path = tmp_path / "resume.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _wait(predicate, proc: subprocess.Popen, log: Path, timeout: float = 400) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"the grid ended early:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, log.read_text()[-4000:]
        time.sleep(0.1)


def _job_runs(uri: str) -> dict[str, list[str]]:
    mlflow = client(uri)
    runs = mlflow.search_runs([mlflow.get_experiment_by_name("resume").experiment_id])
    out: dict[str, list[str]] = {}
    for run in runs:
        if "job_id" in run.data.tags:
            out.setdefault(run.data.tags["job_id"], []).append(run.info.status)
    return {k: sorted(v) for k, v in out.items()}


def test_a_killed_driver_resumes_unfinished_jobs_and_a_rerun_comes_from_cache(
        ray_cluster, mlflow_server, tmp_path):
    config = _config(tmp_path)
    cfg = load_config(config)
    teacher = teacher_job(cfg, cfg.tasks[0]).job_id
    (second,) = (job.job_id for job in expand_grid(cfg, cfg.tasks[0]))
    home = tmp_path / "home"
    env = flow_env(home, mlflow_server.url) | ray_cluster
    command = [sys.executable, "-m", "flows.prune_grid", str(config)]

    log = tmp_path / "killed.log"
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        done = lambda job_id: any((home / "models").glob(f"{job_id}-*/model.safetensors"))  # noqa: E731
        # A checkpoint counts once Ray Train has committed it to the run's snapshot.
        running = lambda job_id: any(  # noqa: E731
            (home / "ray_results").glob(f"{job_id}-*/checkpoint_manager_snapshot.json"))
        _wait(lambda: done(teacher) and running(second), proc, log)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not done(second)
    assert _job_runs(mlflow_server.url)[second] == ["RUNNING"]  # what a dead driver leaves

    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    output = again.stdout + again.stderr
    assert again.returncode == 0, output[-4000:]
    assert f"[{second}] resumed from step" in output  # from its checkpoint, not from scratch
    assert f"[{teacher}] resumed" not in output
    runs = _job_runs(mlflow_server.url)
    assert runs[teacher] == ["FINISHED"]  # not trained again: it came from the cache
    assert runs[second] == ["FINISHED", "KILLED"]  # the interrupted run is closed, not left RUNNING
    registered = lambda: len(client(mlflow_server.url).search_model_versions(  # noqa: E731
        "name = 'resume-tiny_reviews'"))
    assert registered() == 2

    third = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    output = third.stdout + third.stderr
    assert third.returncode == 0, output[-4000:]
    assert _job_runs(mlflow_server.url) == runs  # nothing trained
    assert output.count("Finished in state Cached") >= 4  # teacher, the job, 2 evaluations
    assert registered() == 2
    grid_runs = client(mlflow_server.url).search_runs(
        [client(mlflow_server.url).get_experiment_by_name("resume").experiment_id], "tags.role = 'grid'")
    assert sorted(r.info.status for r in grid_runs) == ["FINISHED", "FINISHED", "KILLED"]


PROBE = """
import ray
from ray.util.state import list_nodes
from infra.experiment.settings import Settings
from infra.train import cluster

started = cluster.connect(Settings.from_env())

@ray.remote(num_cpus=0)
def nodes_seen_from_a_worker() -> int:  # what Ray Train's placement-group cleaner actor does
    return len(list_nodes())

print("worker", ray.get(nodes_seen_from_a_worker.remote()), flush=True)
cluster.disconnect(started)
"""


def test_the_flows_own_cluster_is_found_beside_another_ray_on_the_machine(ray_cluster, tmp_path) -> None:
    # Another Ray runs on this machine (ray_cluster: another experiment, a user's cluster); the
    # driver starts its own. Ray's state API, as Ray Train's own actors call it, must find ours.
    env = {k: v for k, v in flow_env(tmp_path / "home", "").items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="pgo-", dir="/tmp")
    probe = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=240)
    assert probe.returncode == 0, probe.stdout[-2000:] + probe.stderr[-4000:]
    assert "worker 1" in probe.stdout  # our one-node cluster, not the other one
