"""Cache keys: the same job on the same data and code hits; a changed grid value misses only
for the jobs it changes (and for whatever starts from them)."""

from __future__ import annotations

from pathlib import Path

from infra.experiment.config import load_config, parse_config
from infra.data import DatasetRef
from infra.experiment.grid import expand_grid, teacher_job
from infra.track.tracking import ModelRef
from tasks import cache

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests/fixtures/configs/tiny.yaml"


def _dataset(digest: str = "a" * 64) -> DatasetRef:
    return DatasetRef("tiny_reviews", "/data", digest, 2, (0, 1), (("train", 96),))


def _keys(cfg, dataset: DatasetRef) -> dict[float, str]:
    task = cfg.tasks[0]
    teacher = teacher_job(cfg, task)
    ref = ModelRef(teacher.job_id, "run", "model", "/m")
    return {"teacher": cache.train_key(None, {"job": teacher, "dataset": dataset}),
            **{job.sparsity: cache.train_key(None, {"job": job, "dataset": dataset, "teacher": ref,
                                                    "student": None})
               for job in expand_grid(cfg, task)}}


def _changed(**grid) -> object:
    data = load_config(TINY).model_dump(mode="json")
    data["grid"].update(grid)
    return parse_config(data)


def test_an_unchanged_experiment_has_the_same_keys():
    assert _keys(load_config(TINY), _dataset()) == _keys(load_config(TINY), _dataset())


def test_one_more_sparsity_adds_one_key_and_keeps_the_others():
    before, after = _keys(load_config(TINY), _dataset()), _keys(_changed(sparsities=[0.5, 0.7, 0.9]), _dataset())
    assert {k: v for k, v in after.items() if k != 0.7} == before
    assert after[0.7] not in before.values()


def test_other_data_or_teacher_settings_change_every_dependent_key():
    base = _keys(load_config(TINY), _dataset())
    other_data = _keys(load_config(TINY), _dataset("b" * 64))
    assert set(base.values()).isdisjoint(other_data.values())
    data = load_config(TINY).model_dump(mode="json")
    data["teacher"]["learning_rate"] = 1e-3
    other_teacher = _keys(parse_config(data), _dataset())
    assert set(base.values()).isdisjoint(other_teacher.values())  # every job starts from the teacher
