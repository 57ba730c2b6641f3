"""Settings from the environment: the PRUNEGRID_HOME layout (a home written by an earlier
version must keep working) and the offline switches."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from infra.experiment import paths
from infra.experiment.settings import OFFLINE_ENV, PREFECT_ENV, Settings, apply_offline_env, offline_env


def test_the_layout_keeps_its_folder_names(tmp_path: Path) -> None:
    home = Settings.from_env({"PRUNEGRID_HOME": str(tmp_path)}).home
    assert home == tmp_path.resolve()
    names = {"data": paths.data_dir, "models": paths.models_dir, "ray_results": paths.ray_results_dir,
             "results": paths.results_dir, "stack": paths.stack_dir, "bench": paths.bench_dir}
    for name, folder in names.items():
        assert folder(home) == home / name and folder(str(home)) == home / name
    assert paths.bench_dir(home, "homodistil") == home / "bench-homodistil"
    assert list(tmp_path.iterdir()) == []  # paths only: nothing is created


def test_allowing_the_hub_lifts_the_hub_switches_only(monkeypatch: pytest.MonkeyPatch) -> None:
    hub = {"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"}
    assert offline_env(allow_hub=False) == OFFLINE_ENV and hub <= set(OFFLINE_ENV)
    assert set(OFFLINE_ENV) - set(offline_env(allow_hub=True)) == hub
    for key in (*OFFLINE_ENV, *PREFECT_ENV):
        monkeypatch.delenv(key, raising=False)  # restored after the test
    monkeypatch.setenv("DO_NOT_TRACK", "1")  # a value the user set wins
    apply_offline_env(allow_hub=True)
    assert not hub & set(os.environ) and os.environ["DO_NOT_TRACK"] == "1"
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
