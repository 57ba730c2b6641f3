"""The README's path: a Prefect server and worker, `prefect deploy`, `prefect deployment run`,
here of the benchmark refresh (which runs prune-grid as a subflow, then the claims report) on a
cross-lingual XGLUE task (the PAWS-X fixture: train on English, evaluate on English and German),
so the benchmark path runs end to end too."""

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


def test_the_benchmark_refresh_deployment_runs_its_grid_and_reports_the_registrys_numbers(
        mlflow_server, prefect_server, prefect_worker, tmp_path) -> None:
    data = yaml.safe_load(TINY.read_text())
    data["name"] = "tiny-deployed"
    data["registry"]["model_name"] = "deployed-{task}"
    data["grid"]["sparsities"] = [0.5]  # the path is under test here, not the grid
    data["tasks"] = [{"name": "pawsx", "source": "xglue", "subset": "pawsx", "languages": ["de"],
                      "path": str(ROOT / "tests/fixtures/xglue")}]
    data["claims"] = [{"name": "GMP at 50% stays within 30 points of the teacher",
                       "candidate": {"method": "gmp", "sparsity": 0.5}, "baseline": {"method": "teacher"},
                       "margin": 0.3}]
    config = tmp_path / "tiny-deployed.yaml"
    config.write_text(yaml.safe_dump(data))
    report = tmp_path / "claims.md"
    prefect_worker()  # creates the process work pool and polls it
    env = dict(os.environ, PREFECT_API_URL=prefect_server.url + "/api", PRUNEGRID_ROOT=str(ROOT))

    deployed = _prefect(["--no-prompt", "deploy", "--all"], env, timeout=180)
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    listed = _prefect(["deployment", "ls"], env | {"COLUMNS": "250"}, timeout=60)  # rich cuts long names
    assert "prune-grid/prune-grid" in listed.stdout and "benchmark-refresh/benchmark-refresh" in listed.stdout

    run = _prefect(["deployment", "run", "benchmark-refresh/benchmark-refresh", "--param", f"configs={config}",
                    "--param", f"report={report}", "--watch", "--watch-timeout", "840"], env, timeout=900)
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

    # The claims report, computed from MLflow: its numbers are the registry's.
    test = {v.tags["method"]: float(v.tags["test_avg_accuracy"]) for v in versions}
    row = next(line for line in report.read_text().splitlines() if line.startswith("| GMP at 50%"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "test_avg_accuracy"
    assert cells[4] == f"{test['gmp']:.3f} (n=1)" and cells[6] == f"{test['dense']:.3f} (n=1)"
    assert cells[7] == f"{test['gmp'] - test['dense']:+.3f}" and cells[9] in ("**holds**", "**inconclusive**")
    refresh = mlflow.search_runs([mlflow.get_experiment_by_name("benchmark-refresh").experiment_id])
    assert [r.info.status for r in refresh] == ["FINISHED"]
    logged = {f.path for f in mlflow.list_artifacts(refresh[0].info.run_id)}
    assert {"claims.md", "claims.csv"} <= logged
