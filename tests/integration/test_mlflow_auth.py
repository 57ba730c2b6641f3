"""A real `mlflow server --app-name basic-auth` on loopback: anonymous writes are refused,
the pipeline's own write path (infra.track.tracking, credentials from the environment) succeeds."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.track import tracking
from infra.stack.mlflow_auth import basic_auth, ensure_user, write_config
from infra.experiment.settings import OFFLINE_ENV
from tests.integration.helpers import free_port

pytestmark = pytest.mark.integration

ADMIN = ("admin", secrets.token_hex(12))
PIPELINE = ("prunegrid", secrets.token_hex(12))
CREATE_EXPERIMENT = "/api/2.0/mlflow/experiments/create"


def _post(url: str, body: dict, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as reply:
            return reply.status, json.loads(reply.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, {"www-authenticate": error.headers.get("WWW-Authenticate", "")}


def _health(url: str) -> int | None:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
            return reply.status
    except (urllib.error.URLError, OSError):
        return None


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An auth-enabled MLflow server whose admin comes from a generated config file."""
    root = tmp_path_factory.mktemp("mlflow-auth")
    config = write_config(root / "basic_auth.ini", database_uri=f"sqlite:///{root / 'auth.db'}",
                          admin_username=ADMIN[0], admin_password=ADMIN[1])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | OFFLINE_ENV | {
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    argv = [str(Path(sys.executable).parent / "mlflow"), "server", "--app-name", "basic-auth",
            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", (root / "artifacts").as_uri(),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = root / "mlflow.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=root, start_new_session=True)
    try:
        deadline = time.monotonic() + 150
        while _health(url) != 200:
            assert proc.poll() is None, f"mlflow server exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"mlflow server not ready:\n{log.read_text()[-3000:]}"
            time.sleep(0.25)
        yield url
    finally:
        for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)  # the server and its uvicorn worker
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue


@pytest.fixture
def no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(key, raising=False)


def test_anonymous_and_wrong_credentials_cannot_write(auth_server: str, no_credentials: None) -> None:
    status, reply = _post(auth_server + CREATE_EXPERIMENT, {"name": "anonymous"})
    assert status == 401 and "Basic" in reply["www-authenticate"]
    status, _ = _post(auth_server + CREATE_EXPERIMENT, {"name": "guessed"},
                      basic_auth(ADMIN[0], "not-the-password"))
    assert status == 401
    status, _ = _post(auth_server + CREATE_EXPERIMENT, {"name": "by-the-admin"}, basic_auth(*ADMIN))
    assert status == 200  # the admin from the generated config exists


def test_preflight_names_the_credentials_it_needs(auth_server: str, no_credentials: None,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(tracking.TrackingError, match="MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"):
        tracking.check_reachable(auth_server)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
    with pytest.raises(tracking.TrackingError, match="refused user 'admin' \\(HTTP 401\\)"):
        tracking.check_reachable(auth_server)


def test_pipeline_user_writes_through_infra_tracking(auth_server: str, no_credentials: None,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The deployment path: the admin creates the pipeline's user (compose's mlflow-users job),
    the pipeline writes with MLFLOW_TRACKING_USERNAME/PASSWORD from its environment."""
    admin = {"admin_username": ADMIN[0], "admin_password": ADMIN[1]}
    assert ensure_user(auth_server, *PIPELINE, **admin) is True
    assert ensure_user(auth_server, *PIPELINE, **admin) is False  # idempotent
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", PIPELINE[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PIPELINE[1])

    tracking.check_reachable(auth_server)
    experiment = tracking.ensure_experiment(auth_server, "auth-demo")
    assert tracking.ensure_experiment(auth_server, "auth-demo") == experiment
    run_id = tracking.start_run(auth_server, experiment, "grid", tags={"job_id": "abc123"})
    tracking.log_params(auth_server, run_id, {"method": "gmp", "sparsity": 0.5})
    tracking.log_metrics(auth_server, run_id, {"accuracy": 0.8}, step=1)
    tracking.log_text(auth_server, run_id, "{}", "resolved_config.json")  # artifacts go through the proxy
    tracking.end_run(auth_server, run_id, ok=True)

    run = tracking.client(auth_server).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["accuracy"] == 0.8
    assert run.data.params["method"] == "gmp"
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")  # and without them, the same read is refused
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    with pytest.raises(Exception, match="401"):
        tracking.client(auth_server).get_run(run_id)
