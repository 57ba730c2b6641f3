"""A mistake found only once training runs stops that job with one clear message, spares the
rest of the grid and closes every MLflow run. The mistakes preflight catches, before any work,
are tested without servers in tests/flows/test_cli.py."""

from __future__ import annotations

import pytest

from infra.experiment.config import load_config
from infra.experiment.grid import expand_grid
from infra.track.tracking import client
from tests.integration.helpers import flow_env, run_grid, write_config

pytestmark = pytest.mark.integration


def test_a_nan_loss_fails_its_job_once_and_the_rest_of_the_grid_is_registered(tmp_path, mlflow_server
                                                                              ) -> None:
    def one_explodes(d: dict) -> None:
        d["teacher"]["epochs"] = 2  # what the models learn is not under test here
        d["prune"]["epochs"] = 1
        d["grid"].update(methods=["gmp", "sdp"], sparsities=[0.5],
                         options={"gmp": {"update_every": [2]}, "sdp": {"update_every": [2]}})
        # A learning rate no float32 survives: GMP's loss turns NaN/inf a step or two in. Every
        # step is logged, so each attempt at the job leaves its own point at step 1.
        d["prune_overrides"] = {"gmp": {"learning_rate": 1.0e30, "log_every": 1}}
        d["compute"]["max_failures"] = 2  # what a dead node would get; a NaN must not
        d["registry"]["model_name"] = "nanloss-{task}"

    config = write_config(tmp_path, "nanloss", one_explodes)
    cfg = load_config(config)
    bad, good = sorted(expand_grid(cfg, cfg.tasks[0]), key=lambda job: job.method != "gmp")
    proc = run_grid(config, flow_env(tmp_path / "home", mlflow_server.url), timeout=600)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    error = proc.stderr[proc.stderr.find("error:"):]
    assert error.startswith("error:") and "1 grid job(s) failed" in error, proc.stderr[-3000:]
    assert f"{bad.label} ({bad.job_id})" in error and good.job_id not in error, error
    assert "loss is" in error and "lower the learning rate" in error, error

    mlflow = client(mlflow_server.url)
    experiment = mlflow.get_experiment_by_name("nanloss").experiment_id
    runs = mlflow.search_runs([experiment])
    assert "RUNNING" not in {r.info.status for r in runs}
    (failed,) = [r for r in runs if r.data.tags.get("job_id") == bad.job_id]  # no task retry
    assert failed.info.status == "FAILED" and "loss is" in failed.data.tags["error"]
    # One attempt: a Ray Train restart would log step 1 again into the same run.
    assert [m.step for m in mlflow.get_metric_history(failed.info.run_id, "train_loss")].count(1) == 1
    (grid,) = [r for r in runs if r.data.tags.get("role") == "grid"]
    assert grid.info.status == "FAILED" and bad.job_id in grid.data.tags["error"]
    # The rest of the grid was evaluated, registered and promoted.
    versions = {v.tags["label"]: v for v in mlflow.search_model_versions("name = 'nanloss-tiny_reviews'")}
    assert set(versions) == {"teacher-seed0", good.label}
    assert "dev_accuracy" in versions[good.label].tags
    assert mlflow.get_registered_model("nanloss-tiny_reviews").aliases  # the champion at least
