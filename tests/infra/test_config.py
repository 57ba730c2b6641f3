"""Experiment files: every shipped config is valid; mistakes name the field before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from infra.data import DataError
from infra.experiment import preflight
from infra.experiment.config import ConfigError, load_config, parse_config
from infra.experiment.grid import distil_job, expand_grid, teacher_job

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "configs").glob("*.yaml")) + sorted((ROOT / "tests/fixtures/configs").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path: Path) -> None:
    cfg = load_config(path)
    for task in cfg.tasks:
        assert expand_grid(cfg, task), f"{path.name} expands to an empty grid"


def _demo() -> dict:
    return yaml.safe_load((ROOT / "configs/demo.yaml").read_text())


def test_a_typo_names_the_field() -> None:
    data = _demo()
    data["grid"]["sparsites"] = data["grid"].pop("sparsities")
    with pytest.raises(ConfigError, match=r"grid\.sparsites: unknown key"):
        parse_config(data)


def test_a_bad_value_names_the_field() -> None:
    data = _demo()
    data["grid"]["sparsities"] = [0.5, 1.2]
    with pytest.raises(ConfigError, match=r"grid\.sparsities\.1"):
        parse_config(data)


def test_an_unknown_method_option_is_refused() -> None:
    data = _demo()
    data["grid"]["options"] = {"gmp": {"alocation": ["global"]}}
    with pytest.raises(ConfigError, match="unknown option 'alocation' for method 'gmp'"):
        parse_config(data)


def test_an_unknown_method_is_refused() -> None:
    data = _demo()
    data["grid"]["methods"] = ["gmp", "magic"]
    with pytest.raises(ConfigError, match=r"grid\.methods\.1"):
        parse_config(data)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="experiment file not found"):
        load_config(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)


def test_config_is_frozen() -> None:
    cfg = parse_config(_demo())
    with pytest.raises(Exception):
        cfg.name = "other"  # type: ignore[misc]


def test_grid_expansion_is_complete_and_ids_are_stable() -> None:
    data = _demo()
    data["grid"] = {"methods": ["gmp"], "sparsities": [0.5, 0.9], "seeds": [0, 1],
                    "options": {"gmp": {"allocation": ["local", "global"]}}}
    cfg = parse_config(data)
    jobs = expand_grid(cfg, cfg.tasks[0])
    assert len(jobs) == 2 * 2 * 2
    assert len({j.job_id for j in jobs}) == len(jobs)
    again = expand_grid(parse_config(data), cfg.tasks[0])
    assert [j.job_id for j in jobs] == [j.job_id for j in again]
    assert teacher_job(cfg, cfg.tasks[0]).job_id not in {j.job_id for j in jobs}


def test_changing_one_value_changes_only_what_depends_on_it() -> None:
    base = parse_config(_demo())
    data = _demo()
    data["prune"]["learning_rate"] *= 2
    changed = parse_config(data)
    task = base.tasks[0]
    assert teacher_job(base, task).job_id == teacher_job(changed, changed.tasks[0]).job_id
    old = {j.job_id for j in expand_grid(base, task)}
    new = {j.job_id for j in expand_grid(changed, changed.tasks[0])}
    assert old.isdisjoint(new)


def test_preflight_finds_the_model_and_names_missing_data(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)  # the fixture's paths are relative to the repository root
    data = yaml.safe_load((ROOT / "tests/fixtures/configs/tiny.yaml").read_text())
    model_dir = preflight.check(parse_config(data), None, allow_hub=False)
    assert model_dir == str(ROOT / "tests/fixtures/tiny-bert")
    data["tasks"][0]["path"] = str(tmp_path / "gone.csv")
    with pytest.raises(DataError, match="gone.csv not found"):
        preflight.check(parse_config(data), None, allow_hub=False)


def test_a_shared_task_agnostic_stage_is_one_student_per_path_that_every_seed_starts_from() -> None:
    """distil.per_seed false: three seeds, one HomoDistil student (the first seed's own, same id),
    and task-stage ids that say so; the default keeps every id it had."""
    data = _demo()
    data["grid"] = {"methods": ["homodistil", "gmp"], "sparsities": [0.5], "seeds": [3, 4, 5],
                    "options": {"homodistil": {"path": ["homotopic", "prune_first"]}}}
    each = parse_config(data)
    data["distil"] = {**data.get("distil", {}), "per_seed": False}
    once = parse_config(data)
    task = each.tasks[0]

    def students(cfg):
        return {j.job_id: distil_job(cfg, task, j) for j in expand_grid(cfg, task) if j.method == "homodistil"}

    assert len({d.job_id for d in students(each).values()}) == 2 * 3
    shared = students(once)
    assert len({d.job_id for d in shared.values()}) == 2  # one per path
    assert {d.seed for d in shared.values()} == {3}
    assert {d.job_id for d in shared.values()} <= {d.job_id for d in students(each).values()}
    # A task stage from a shared student is another job; GMP's jobs and the teacher are not.
    assert set(shared).isdisjoint(students(each))
    gmp = [{j.job_id for j in expand_grid(c, task) if j.method == "gmp"} for c in (each, once)]
    assert gmp[0] == gmp[1] and teacher_job(each, task).job_id == teacher_job(once, task).job_id
    assert "per_seed" not in each.model_dump(mode="json")["distil"]  # default: hashes as before
