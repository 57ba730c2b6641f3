"""Secrets stay secret on a Ray cluster, and the cluster the flow starts is locked.

(a) The MLflow password reaches the training workers of a job on an existing cluster (a
`ray start` head whose processes never had it) and appears in no Ray listing (jobs, actors,
tasks, Train runs) and in no MLflow param, tag or text artifact. (b) The Ray the flow starts
for itself takes no job and no driver without its token.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import ray

from infra import data
from infra.experiment import jobs
from infra.experiment.config import load_config
from infra.experiment.grid import teacher_job
from infra.experiment.jobs import GridContext
from infra.experiment.preflight import split_spec, task_source
from infra.experiment.settings import Settings
from infra.models import pretrained
from infra.stack.mlflow_auth import ensure_user
from infra.track import tracking
from infra.track.tracking import client
from infra.train import cluster
from tests.integration.helpers import ROOT, TINY, free_port
from tests.integration.test_mlflow_auth import ADMIN, auth_server  # noqa: F401  (the fixture)

pytestmark = pytest.mark.integration
TINY_BERT = str(ROOT / "tests/fixtures/tiny-bert")
PIPELINE = ("prunegrid-secrets", secrets.token_hex(16))
SECRET = PIPELINE[1]
NO_RAY_AUTH = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")


def _stop_ray(port: int, temp: Path) -> None:
    """Kill this head's processes only (their command lines name its port or temp folder)."""
    marks = (f"127.0.0.1:{port}", f"gcs_server_port={port}", str(temp))
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if int(pid) != os.getpid() and any(m in cmdline for m in marks):
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def ray_head(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A `ray start` head on loopback with token auth and a dashboard (the state API), started
    without any MLflow variable: its workers know the password only if the driver sends it."""
    temp = Path(tempfile.mkdtemp(prefix="pgs-", dir="/tmp"))  # unix socket paths stay short
    token = temp / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    port, dashboard = free_port(), free_port()
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | auth
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--node-ip-address=127.0.0.1",
               f"--port={port}", "--num-cpus=1", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
               f"--dashboard-port={dashboard}", "--disable-usage-stats", f"--temp-dir={temp}"]
    try:
        subprocess.run(command, env=env, check=True, capture_output=True, timeout=300)
        yield auth | {"RAY_ADDRESS": f"127.0.0.1:{port}", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                      "dashboard": f"http://127.0.0.1:{dashboard}"}
    finally:
        _stop_ray(port, temp)


def _dataset(folder: Path) -> data.DatasetRef:
    spec = load_config(TINY).tasks[0]
    spec = spec.model_copy(update={"path": str(ROOT / spec.path)})
    return data.prepare(task_source(spec), split_spec(spec), pretrained.load_tokenizer(TINY_BERT), 32,
                        folder)


def _listings(dashboard: str, token: str) -> str:
    """Everything the cluster shows about its jobs, actors, tasks and Train runs, as text."""
    from ray.util.state import list_actors, list_jobs, list_tasks

    shown = [list_jobs(detail=True, limit=1000), list_actors(detail=True, limit=10_000),
             list_tasks(detail=True, limit=10_000)]
    request = urllib.request.Request(f"{dashboard}/api/train/v2/runs/v1",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=60) as reply:  # the dashboard's Train page
        runs = json.loads(reply.read())
    assert runs["train_runs"], runs  # the Train page lists the job (with its train_loop_config)
    shown.append(runs)
    return json.dumps(shown, default=str)


def _mlflow_text(uri: str, experiment_id: str, folder: Path) -> str:
    """Every param, tag and text artifact of the experiment's runs, as text."""
    mlflow = client(uri)
    texts = []
    for run in mlflow.search_runs([experiment_id]):
        texts.append(json.dumps([run.data.params, run.data.tags]))
        local = Path(mlflow.download_artifacts(run.info.run_id, "", str(folder / run.info.run_id)))
        texts += [p.read_text(errors="replace") for p in local.rglob("*")
                  if p.is_file() and p.suffix in (".json", ".txt", ".md", ".csv", ".yaml", "")]
    return "\n".join(texts)


def drive(uri: str, home: str, dashboard: str, out: str) -> None:
    """The driver side, in its own process (Ray reads its auth settings at import): one tiny
    teacher job on the cluster in RAY_ADDRESS, then what the cluster shows, into `out`."""
    started = cluster.connect(Settings.from_env())
    try:
        experiment = tracking.ensure_experiment(uri, "secrets")
        ctx = GridContext("secrets", uri, experiment, tracking.start_run(uri, experiment, "grid"), home,
                          TINY_BERT)
        cfg = load_config(TINY)
        job = teacher_job(cfg, cfg.tasks[0])
        job = replace(job, train=job.train.model_copy(update={"epochs": 1.0}))
        model = jobs.train(job, _dataset(Path(home) / "data"), None, ctx)
        shown = _listings(dashboard, Path(os.environ["RAY_AUTH_TOKEN_PATH"]).read_text())
    finally:
        cluster.disconnect(started)
    Path(out).write_text(json.dumps({"run_id": model.run_id, "experiment": experiment, "shown": shown}))


def test_a_the_password_reaches_the_workers_and_nothing_shows_it(auth_server, ray_head, tmp_path,  # noqa: F811
                                                                  monkeypatch: pytest.MonkeyPatch):
    assert ensure_user(auth_server, *PIPELINE, admin_username=ADMIN[0], admin_password=ADMIN[1])
    env = os.environ | {k: v for k, v in ray_head.items() if k != "dashboard"} | {
        "MLFLOW_TRACKING_URI": auth_server, "MLFLOW_TRACKING_USERNAME": PIPELINE[0],
        "MLFLOW_TRACKING_PASSWORD": SECRET, "PRUNEGRID_HOME": str(tmp_path / "home"),
        "RAY_TRAIN_ENABLE_STATE_TRACKING": "1"}  # the dashboard's Train page shows each run's settings
    out = tmp_path / "driver.json"
    call = (f"from tests.integration.test_secrets import drive; "
            f"drive({auth_server!r}, {str(tmp_path / 'home')!r}, {ray_head['dashboard']!r}, {str(out)!r})")
    proc = subprocess.run([sys.executable, "-c", call], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", PIPELINE[0])  # to read the runs back
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRET)
    # The worker logged its loss curve: it had the credentials (the head's processes never did).
    assert client(auth_server).get_metric_history(result["run_id"], "train_loss")
    assert SECRET not in result["shown"]
    assert SECRET not in _mlflow_text(auth_server, result["experiment"], tmp_path / "artifacts")


def test_b_the_flow_s_own_ray_refuses_a_client_without_its_token(tmp_path, monkeypatch: pytest.MonkeyPatch):
    for key in NO_RAY_AUTH:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PRUNEGRID_HOME", str(tmp_path / "home"))
    # The user's own HOME, where Ray keeps its token (~/.ray/auth_token): Ray caches the token a
    # process has read, so a temporary HOME here would leave this test process's later Ray
    # starts (other test files in the same pytest worker) holding a token their GCS rejects.
    started = cluster.connect(Settings.from_env(), num_cpus=1)
    try:
        token = Path.home() / ".ray" / "auth_token"
        assert token.stat().st_mode & 0o777 == 0o600  # the user's alone
        from ray._private.worker import get_dashboard_url  # the URL ray.init printed

        dashboard = f"http://{get_dashboard_url()}"
        gcs = ray.get_runtime_context().gcs_address
        stranger = {k: v for k, v in os.environ.items() if k not in NO_RAY_AUTH} | {
            "HOME": str(tmp_path / "stranger"), "RAY_ADDRESS": ""}  # no token anywhere
        probe = ("import sys\nfrom ray.job_submission import JobSubmissionClient\n"
                 "try:\n    JobSubmissionClient(sys.argv[1]).submit_job(entrypoint='echo owned')\n"
                 "except Exception as error:\n    print('REFUSED', type(error).__name__, error)\n"
                 "else:\n    print('ACCEPTED')\n")
        job = subprocess.run([sys.executable, "-c", probe, dashboard], env=stranger, capture_output=True,
                             text=True, timeout=120)
        assert "REFUSED" in job.stdout, job.stdout + job.stderr
        driver = subprocess.run([sys.executable, "-c", f"import ray; ray.init(address='{gcs}')"],
                                env=stranger, capture_output=True, text=True, timeout=180)
        assert driver.returncode != 0 and "auth" in (driver.stdout + driver.stderr).lower(), driver.stderr[-2000:]
        with_token = subprocess.run([sys.executable, "-c", probe.replace("submit_job(entrypoint='echo owned')",
                                                                         "list_jobs()"), dashboard],
                                    env=os.environ | {"RAY_ADDRESS": ""}, capture_output=True, text=True,
                                    timeout=120)
        assert "ACCEPTED" in with_token.stdout, with_token.stdout + with_token.stderr  # the same call, with it
    finally:
        cluster.disconnect(started)
