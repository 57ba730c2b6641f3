"""MLflow credentials: the auth config files, and their way to the Ray workers (no server)."""

from __future__ import annotations

import configparser
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from infra.stack.mlflow_auth import AuthError, ensure_user, write_config
from infra.train.cluster import worker_env
from infra.experiment.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "docker" / "mlflow-entrypoint.sh"


def test_write_config_is_private_and_complete(tmp_path: Path) -> None:
    path = write_config(tmp_path / "auth.ini", database_uri="sqlite:///auth.db",
                        admin_username="root-user", admin_password="p" * 16)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it may hold the admin password
    section = configparser.ConfigParser()
    section.read(path)
    assert dict(section["mlflow"]) == {
        "default_permission": "READ", "database_uri": "sqlite:///auth.db",
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        "admin_username": "root-user", "admin_password": "p" * 16}


def test_image_entrypoint_writes_a_config_mlflow_reads_and_starts_basic_auth(tmp_path: Path) -> None:
    """docker/mlflow-entrypoint.sh, with a stand-in `mlflow` that reports what it was given."""
    fake = tmp_path / "bin" / "mlflow"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\nexec {sys.executable} -c "import json, sys; '
                    'from mlflow.server.auth.config import read_auth_config; '
                    'print(json.dumps([sys.argv[1:], read_auth_config()._asdict()]))" "$@"\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {
        "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path),
        "MLFLOW_AUTH_DATABASE_URI": "postgresql+psycopg2://mlflow:pw@postgres:5432/mlflow_auth",
        "MLFLOW_AUTH_ADMIN_USERNAME": "admin", "MLFLOW_AUTH_ADMIN_PASSWORD": "a-long-admin-password",
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "k" * 32}
    done = subprocess.run(["sh", str(ENTRYPOINT), "--host", "0.0.0.0"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    argv, config = json.loads(done.stdout.strip().splitlines()[-1])
    assert argv[:2] == ["server", "--app-name"] and argv[2] == "basic-auth"
    assert config["database_uri"] == env["MLFLOW_AUTH_DATABASE_URI"]
    assert config["default_permission"] == "READ"
    # The admin comes from the environment; the file on disk holds no password.
    assert (config["admin_username"], config["admin_password"]) == ("admin", "a-long-admin-password")
    written = (tmp_path / "basic_auth.ini").read_text()
    assert "admin_password" not in written and "a-long-admin-password" not in written
    assert stat.S_IMODE((tmp_path / "basic_auth.ini").stat().st_mode) == 0o600


def test_image_entrypoint_refuses_to_start_without_its_settings(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {"HOME": str(tmp_path)}
    done = subprocess.run(["sh", str(ENTRYPOINT)], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and "MLFLOW_AUTH_DATABASE_URI" in done.stderr


def test_ensure_user_refuses_a_password_mlflow_would_refuse() -> None:
    with pytest.raises(AuthError, match="shorter than 12"):
        ensure_user("http://127.0.0.1:9", "prunegrid", "short", admin_username="a", admin_password="b")


def test_the_ray_runtime_env_carries_the_mlflow_address_and_no_credentials(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """cluster.connect hands worker_env to every Ray worker as runtime_env env_vars, which the
    cluster's job table shows: the credentials go through the object store (share_secrets)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "prunegrid")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "a-long-pipeline-password")
    env = worker_env(Settings.from_env({"PRUNEGRID_HOME": str(tmp_path)}))
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert "prunegrid" not in env.values() and "a-long-pipeline-password" not in env.values()
