"""The PRUNEGRID_HOME layout: a home written by an earlier version must keep working."""

from __future__ import annotations

from pathlib import Path

from infra.experiment import paths
from infra.experiment.settings import Settings


def test_the_layout_keeps_its_folder_names(tmp_path: Path) -> None:
    home = Settings.from_env({"PRUNEGRID_HOME": str(tmp_path)}).home
    assert home == tmp_path.resolve()
    names = {"data": paths.data_dir, "models": paths.models_dir, "ray_results": paths.ray_results_dir,
             "results": paths.results_dir, "stack": paths.stack_dir, "bench": paths.bench_dir}
    for name, folder in names.items():
        assert folder(home) == home / name and folder(str(home)) == home / name
    assert paths.bench_dir(home, "homodistil") == home / "bench-homodistil"
    assert list(tmp_path.iterdir()) == []  # paths only: nothing is created
