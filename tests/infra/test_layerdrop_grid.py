"""The layer-dropped dense control is a grid method: a config YAML names it and its options,
validated before any work, and the grid gives it one job per sparsity (issue 17's control)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from infra.experiment.config import ConfigError, parse_config
from infra.experiment.grid import expand_grid

ROOT = Path(__file__).resolve().parents[2]


def _demo_with(options: dict) -> dict:
    data = yaml.safe_load((ROOT / "configs/demo.yaml").read_text())
    data["grid"]["methods"] = ["gmp", "layerdrop"]
    data["grid"]["options"] = {"gmp": data["grid"]["options"]["gmp"], "layerdrop": options}
    return data


def test_a_config_runs_the_layer_dropped_control_beside_the_pruned_models() -> None:
    cfg = parse_config(_demo_with({"kd_weight": [0.0, 1.0], "layer_choice": ["spread"]}))
    jobs = [j for j in expand_grid(cfg, cfg.tasks[0]) if j.method == "layerdrop"]
    assert sorted({j.sparsity for j in jobs}) == [0.5, 0.7, 0.9] and len(jobs) == 6
    assert "layerdrop-s70-seed0-kd_weight=0.0-layer_choice=spread" in {j.label for j in jobs}
    assert len({j.job_id for j in jobs}) == 6


def test_a_misspelt_layerdrop_option_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown option 'keep' for method 'layerdrop'"):
        parse_config(_demo_with({"keep": [2]}))
