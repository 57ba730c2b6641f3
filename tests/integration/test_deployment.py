"""The README's path: a Prefect server and worker, `prefect deploy`, `prefect deployment run`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from infra.tracking import client
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
    versions = mlflow.search_model_versions("name = 'deployed-tiny_reviews'")
    assert len(versions) == 2  # the teacher and the pruned model
    assert "champion" in mlflow.get_registered_model("deployed-tiny_reviews").aliases
