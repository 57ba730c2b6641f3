"""A mistake found only once training runs stops the run with one clear message and closes
every MLflow run. The mistakes preflight catches, before any work, are tested without servers
in tests/flows/test_cli.py."""

from __future__ import annotations

import pytest

from infra.track.tracking import client
from tests.integration.helpers import flow_env, run_grid, write_config

pytestmark = pytest.mark.integration


def test_a_nan_loss_stops_the_job_with_its_cause_and_closes_every_run(tmp_path, mlflow_server) -> None:
    def explode(d: dict) -> None:  # a learning rate no float32 survives: the loss turns NaN/inf
        d["teacher"]["learning_rate"] = 1.0e30
        d["teacher"]["warmup_fraction"] = 0.0

    config = write_config(tmp_path, "nanloss", explode)
    home = tmp_path / "home"
    proc = run_grid(config, flow_env(home, mlflow_server.url), timeout=600)
    assert proc.returncode == 1
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert error and "loss is" in error[0] and "lower the learning rate" in error[0], proc.stderr[-3000:]
    mlflow = client(mlflow_server.url)
    runs = mlflow.search_runs([mlflow.get_experiment_by_name("nanloss").experiment_id])
    assert {r.info.status for r in runs} == {"FAILED"}  # the grid run and the teacher's: none RUNNING
    teacher = next(r for r in runs if r.data.tags.get("role") == "teacher")
    assert "loss is" in teacher.data.tags["error"]
