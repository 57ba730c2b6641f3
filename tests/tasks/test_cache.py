"""Cache keys: the same job on the same data and code hits; a changed grid value misses only
for the jobs it changes (and for whatever starts from them); so does a teacher trained again,
new weights in the pretrained model's directory, or another library version."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from infra.experiment import provenance
from infra.experiment.config import load_config, parse_config
from infra.data import DatasetRef
from infra.experiment.grid import expand_grid, teacher_job
from infra.experiment.jobs import GridContext
from infra.track.tracking import ModelRef
from tasks import cache

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests/fixtures/configs/tiny.yaml"
TINY_BERT = ROOT / "tests/fixtures/tiny-bert"
CTX = GridContext("tiny", "http://127.0.0.1:1", "1", "parent", "/home", str(TINY_BERT))


def _dataset(digest: str = "a" * 64) -> DatasetRef:
    return DatasetRef("tiny_reviews", "/data", digest, 2, (0, 1), (("train", 96),))


def _keys(cfg, dataset: DatasetRef, teacher_run: str = "run", ctx: GridContext = CTX) -> dict[float, str]:
    task = cfg.tasks[0]
    teacher = teacher_job(cfg, task)
    ref = ModelRef(teacher.job_id, teacher_run, "model", "/m")
    return {"teacher": cache.train_key(None, {"job": teacher, "dataset": dataset, "ctx": ctx}),
            **{job.sparsity: cache.train_key(None, {"job": job, "dataset": dataset, "teacher": ref,
                                                    "student": None, "ctx": ctx})
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


def test_a_teacher_trained_again_changes_every_grid_key_and_not_its_own():
    base, again = _keys(load_config(TINY), _dataset()), _keys(load_config(TINY), _dataset(), "run-2")
    assert again["teacher"] == base["teacher"]
    assert {v for k, v in again.items() if k != "teacher"}.isdisjoint(base.values())


def test_new_weights_under_the_same_model_directory_change_every_key(tmp_path):
    model = tmp_path / "tiny-bert"
    shutil.copytree(TINY_BERT, model)
    ctx = GridContext("tiny", "http://127.0.0.1:1", "1", "parent", "/home", str(model))
    before = _keys(load_config(TINY), _dataset(), ctx=ctx)
    assert _keys(load_config(TINY), _dataset(), ctx=ctx) == before
    (model / "model.safetensors").write_bytes(b"other weights")
    assert set(_keys(load_config(TINY), _dataset(), ctx=ctx).values()).isdisjoint(before.values())


def test_another_library_version_changes_every_key(monkeypatch: pytest.MonkeyPatch):
    base = _keys(load_config(TINY), _dataset())
    versions = provenance.library_versions() | {"torch": "0.0.1"}
    monkeypatch.setattr(provenance, "library_versions", lambda: versions)
    assert set(_keys(load_config(TINY), _dataset()).values()).isdisjoint(base.values())

