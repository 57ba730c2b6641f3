"""Every method in one tiny grid, through the real CLI, MLflow server, Ray and Prefect."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra.track.tracking import client
from tests.integration.helpers import ROOT, flow_env, run_grid

pytestmark = pytest.mark.integration
CONFIG = ROOT / "tests/fixtures/configs/tiny-methods.yaml"
MODEL = "tiny-methods-tiny_reviews"  # registry.model_name of that config
LABELS = {"gmp": "gmp-s70-seed0-update_every=2", "sdp": "sdp-s70-seed0-update_every=2",
          "sparsebert": "sparsebert-s70-seed0"}
HOMODISTIL = "homodistil-s70-seed0-update_every=2"


def test_every_method_runs_and_is_registered_at_its_target_sparsity(mlflow_server, tmp_path: Path):
    proc = run_grid(CONFIG, flow_env(tmp_path, mlflow_server.url))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    mlflow = client(mlflow_server.url)
    versions = {v.tags["label"]: v for v in mlflow.search_model_versions(f"name = '{MODEL}'")}
    assert set(versions) == {"teacher-seed0", *LABELS.values(), HOMODISTIL}
    for method, label in LABELS.items():
        tags = versions[label].tags
        assert tags["method"] == method
        assert float(tags["encoder_sparsity"]) == pytest.approx(0.7, abs=1e-3), method
        for key in ("dev_accuracy", "weight_snr", "separability_fisher", "separability_silhouette"):
            assert key in tags, (method, key)
        # The recovery curve rides along as an artifact of the job's run.
        run_id = versions[label].run_id
        names = {a.path for a in mlflow.list_artifacts(run_id)}
        assert "recovery.json" in names, (method, names)
        curve = json.loads(Path(mlflow.download_artifacts(run_id, "recovery.json", str(tmp_path)))
                           .read_text())
        assert curve["records"] and all("before" in r and r["after"] for r in curve["records"])
    teacher_runs = {a.path for a in mlflow.list_artifacts(versions["teacher-seed0"].run_id)}
    assert "recovery.json" not in teacher_runs  # dense fine-tuning has no mask updates

    # HomoDistil: a physically smaller dense model within its parameter budget (30% kept),
    # fine-tuned from the compact student its task-agnostic stage distilled.
    compact = versions[HOMODISTIL]
    teacher_params = float(versions["teacher-seed0"].tags["model_nonzero_params"])
    assert float(compact.tags["model_nonzero_params"]) <= 0.3 * teacher_params * 1.02
    folder = Path(mlflow.download_artifacts(compact.run_id, "model", str(tmp_path / "compact")))
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "compact-bert" and config["hidden_size"] < 32
    runs = mlflow.search_runs([mlflow.get_experiment_by_name("tiny-methods").experiment_id])
    roles = {r.data.tags.get("role") for r in runs}
    assert "distilled" in roles and {r.info.status for r in runs} == {"FINISHED"}
