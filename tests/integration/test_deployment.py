"""The README's path: a Prefect server and worker, `prefect deploy`, `prefect deployment run`,
here on a cross-lingual XGLUE task (the PAWS-X fixture: train on English, evaluate on English
and German), so the benchmark path runs end to end too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from infra.track.tracking import client
from tests.integration.helpers import ROOT, TINY

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _prefect(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    prefect = str(Path(sys.executable).parent / "prefect")
    return subprocess.run([prefect, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_deployment_run_completes_and_fills_the_registry(mlflow_server, prefect_server,
                                                         prefect_worker, tmp_path) -> None:
    data = yaml.safe_load(TINY.read_text())
    data["name"] = "tiny-deployed"
    data["registry"]["model_name"] = "deployed-{task}"
    data["grid"]["sparsities"] = [0.5]  # the path is under test here, not the grid
    data["tasks"] = [{"name": "pawsx", "source": "xglue", "subset": "pawsx", "languages": ["de"],
                      "path": str(ROOT / "tests/fixtures/xglue")}]
    config = tmp_path / "tiny-deployed.yaml"
    config.write_text(yaml.safe_dump(data))
    prefect_worker()  # creates the process work pool and polls it
    env = dict(os.environ, PREFECT_API_URL=prefect_server.url + "/api", PRUNEGRID_ROOT=str(ROOT))

    deployed = _prefect(["--no-prompt", "deploy", "--all"], env, timeout=180)
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    listed = _prefect(["deployment", "ls"], env, timeout=60)
    assert "prune-grid/prune-grid" in listed.stdout

    run = _prefect(["deployment", "run", "prune-grid/prune-grid", "--param", f"config={config}",
                    "--watch", "--watch-timeout", "840"], env, timeout=900)
    out = run.stdout + run.stderr
    assert run.returncode == 0 and "Completed" in out, out[-4000:]

    mlflow = client(mlflow_server.url)
    versions = mlflow.search_model_versions("name = 'deployed-pawsx'")
    assert len(versions) == 2  # the teacher and the pruned model
    champion = mlflow.get_model_version_by_alias("deployed-pawsx", "champion")
    # Zero-shot German next to English, and the gate read on their mean (the default).
    for version in versions:
        tags = version.tags
        for key in ("dev_accuracy", "dev_de_accuracy", "test_de_accuracy", "dev_avg_accuracy"):
            assert key in tags, (key, sorted(tags))
        mean = (float(tags["dev_accuracy"]) + float(tags["dev_de_accuracy"])) / 2
        assert float(tags["dev_avg_accuracy"]) == pytest.approx(mean, abs=1e-5)
        assert tags["gate_metric"] == "dev_avg_accuracy"
    assert champion.tags["passed_gate"] == "true"
