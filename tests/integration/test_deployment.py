"""The README's path: a Prefect server and worker, `prefect deploy`, `prefect deployment run`,
here of the benchmark refresh (which runs prune-grid as a subflow, then the claims report) on a
cross-lingual XGLUE task (the PAWS-X fixture: train on English, evaluate on English and German),
so the benchmark path runs end to end too."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from infra.track.tracking import client
from tests.integration.helpers import ROOT, TINY, descendants, processes, running_job

pytestmark = pytest.mark.integration


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


@pytest.mark.slow
def test_a_cancelled_deployment_run_ends_every_run_and_leaves_no_ray_process(
        mlflow_server, prefect_server, prefect_worker, tmp_path) -> None:
    """`prefect flow-run cancel` mid-job: the worker's SIGTERM reaches the flow, which ends the
    grid's MLflow runs KILLED and aborts its Ray jobs; no process of the flow run stays."""
    data = yaml.safe_load(TINY.read_text())
    data["name"] = "tiny-cancelled"
    data["teacher"].update(epochs=400, log_every=1)  # minutes of training: cancelled mid-job
    config = tmp_path / "tiny-cancelled.yaml"
    config.write_text(yaml.safe_dump(data))
    prefect_worker()
    env = dict(os.environ, PREFECT_API_URL=prefect_server.url + "/api", PRUNEGRID_ROOT=str(ROOT))
    if "prune-grid/prune-grid" not in _prefect(["deployment", "ls"], env, timeout=60).stdout:
        deployed = _prefect(["--no-prompt", "deploy", "--name", "prune-grid"], env, timeout=180)
        assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    started = _prefect(["deployment", "run", "prune-grid/prune-grid", "--param", f"config={config}"],
                       env, timeout=60)
    flow_run = re.search(r"UUID: ([0-9a-f-]{36})", started.stdout).group(1)

    def inspect() -> dict:
        return json.loads(_prefect(["flow-run", "inspect", flow_run, "-o", "json"], env, timeout=60).stdout)

    mlflow = client(mlflow_server.url)
    job = running_job(mlflow, "tiny-cancelled", time.monotonic() + 400)
    pid = int(inspect()["infrastructure_pid"].rsplit(":", 1)[-1])  # "host:pid" of the flow-run process
    tree = descendants(pid) | {pid: "the flow run"}
    assert any("raylet" in command for command in tree.values()), tree
    cancel = _prefect(["flow-run", "cancel", flow_run], env, timeout=60)
    assert cancel.returncode == 0, cancel.stdout + cancel.stderr

    deadline = time.monotonic() + 90  # the worker's grace period (30 s) and Ray's exit
    while time.monotonic() < deadline and (inspect()["state"]["type"] != "CANCELLED"
                                           or set(tree) & set(processes())):
        time.sleep(1)
    assert inspect()["state"]["type"] == "CANCELLED"
    assert not {p: tree[p] for p in set(tree) & set(processes())}
    runs = mlflow.search_runs([mlflow.get_experiment_by_name("tiny-cancelled").experiment_id])
    statuses = {r.info.run_id: r.info.status for r in runs}
    assert "RUNNING" not in statuses.values() and statuses[job.info.run_id] == "KILLED", statuses
