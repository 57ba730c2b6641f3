"""Frozen-teacher outputs computed once (infra.train.teacher_cache): the same loss as the live
teacher, shared by jobs, partial under a cap, rebuilt when damaged."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from infra import data
from infra.train import teacher_cache
from pruning import teacher_outputs
from pruning.methods import build_method
from tests.tiny import VOCAB, make_tiny_bert

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
DATA_HASH = "d" * 64


def ragged_table(n: int = 40, seed: int = 0) -> pa.Table:
    """Rows of 3 to 14 tokens (pad id 0 never inside a row) with two-class labels."""
    rng = np.random.default_rng(seed)
    ids = [rng.integers(1, VOCAB, int(k)).tolist() for k in rng.integers(3, 15, n)]
    return pa.table({"input_ids": pa.array(ids, pa.list_(pa.int32())),
                     "token_type_ids": pa.array([[0] * len(r) for r in ids], pa.list_(pa.int8())),
                     "label": pa.array(rng.integers(0, 2, n), pa.int64())})


def method_of(name: str, **options):
    student = make_tiny_bert(seed=1, **NO_DROPOUT)
    teacher = make_tiny_bert(seed=2, **NO_DROPOUT)
    return build_method(name, student, teacher=teacher, total_steps=100, final_sparsity=0.5, options=options)


def ensure(method, table, root: Path, *, cap_bytes: int = 1 << 30, dtype: str = "float32",
           teacher: str = "teacher-a", log=None):
    return teacher_cache.ensure(method, table, root=root, data_hash=DATA_HASH, teacher=teacher,
                                pad_token_id=0, cap_bytes=cap_bytes, dtype=dtype,
                                log=log or (lambda _: None))


def epoch(table: pa.Table, bucketed: bool = False):
    return data.batches(table, 8, shuffle=True, seed=3, example_ids=True, length_buckets=bucketed)


def loss_and_grads(method, batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
    method.student.zero_grad()
    loss, _ = method.loss(method.student, batch)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in method.student.parameters() if p.grad is not None]


def assert_same_loss(method, cache, table, *, bucketed: bool = False, rtol: float = 1e-5,
                     atol: float = 1e-6) -> int:
    """Every batch of an epoch: the loss and gradients with the cache equal the live teacher's."""
    checked = 0
    for batch in epoch(table, bucketed):
        live = {k: v for k, v in batch.items() if k != "example_ids"}
        cached = cache.attach(batch, method)
        assert "example_ids" not in cached and teacher_outputs.PREFIX + "logits" in cached
        want, want_grads = loss_and_grads(method, live)
        got, got_grads = loss_and_grads(method, cached)
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol)
        for g, w in zip(got_grads, want_grads):
            torch.testing.assert_close(g, w, rtol=rtol * 10, atol=atol * 10)
        checked += 1
    return checked


@pytest.mark.parametrize("options", [{"representation": "cls"}, {"representation": "pooled"},
                                     {"representation": "all_layers"}, {"representation": "logits"},
                                     {"self_loss": "kl_logits"}])
def test_sdp_loss_with_the_cache_equals_the_live_teachers(tmp_path: Path, options: dict) -> None:
    method, table = method_of("sdp", **options), ragged_table()
    cache = ensure(method, table, tmp_path)
    assert cache is not None and cache.rows == table.num_rows
    assert assert_same_loss(method, cache, table) == 5


@pytest.mark.parametrize("bucketed", [False, True])
def test_sparsebert_loss_with_the_cache_equals_the_live_teachers(tmp_path: Path, bucketed: bool) -> None:
    # Batches are shorter than the longest row (14): hidden states and scores at padded
    # positions come from the cache's rows padded to 14, cut to the batch's T.
    method, table = method_of("sparsebert"), ragged_table()
    cache = ensure(method, table, tmp_path)
    assert cache.meta["length"] == 14 and cache.shapes["hidden"] == (3, 14, 32)
    assert cache.shapes["scores"] == (2, 2, 14, 14) and cache.shapes["logits"] == (2,)
    widths = {b["input_ids"].shape[1] for b in epoch(table, bucketed)}
    assert min(widths) < 14
    assert_same_loss(method, cache, table, bucketed=bucketed)


def test_a_cap_stores_the_first_rows_and_the_rest_runs_live(tmp_path: Path) -> None:
    method, table = method_of("sparsebert"), ragged_table()
    per_example = 4 * (3 * 14 * 32 + 2 * 2 * 14 * 14 + 2)
    cache = ensure(method, table, tmp_path, cap_bytes=12 * per_example + 5)
    assert cache.rows == 12
    assert_same_loss(method, cache, table)
    assert ensure(method_of("sparsebert"), table, tmp_path / "none", cap_bytes=per_example - 1) is None


def test_float16_storage_keeps_the_loss_close(tmp_path: Path) -> None:
    method, table = method_of("sparsebert"), ragged_table()
    cache = ensure(method, table, tmp_path, dtype="float16")
    assert cache.meta["dtypes"] == {"hidden": "float16", "scores": "float16", "logits": "float32"}
    assert_same_loss(method, cache, table, rtol=2e-3, atol=1e-4)


def test_no_cache_for_a_teacher_that_trains_or_a_method_without_one(tmp_path: Path) -> None:
    # SDP's shared mode: the teacher is the student's own weights, which change every step.
    assert method_of("sdp", teacher_mode="shared").teacher_outputs_spec() is None
    assert method_of("gmp").teacher_outputs_spec() is None
    assert ensure(method_of("sdp", teacher_mode="shared"), ragged_table(), tmp_path) is None
    assert not tmp_path.joinpath("anything").exists() and not list(tmp_path.iterdir())


def test_the_cache_is_built_once_then_shared_and_rebuilt_when_damaged(tmp_path: Path) -> None:
    table, logs = ragged_table(), []
    first = ensure(method_of("sdp"), table, tmp_path, log=logs.append)
    built = len(logs)
    again = ensure(method_of("sdp"), table, tmp_path, log=logs.append)  # another job, same teacher
    assert again.folder == first.folder and len(logs) == built  # read, not built
    other = ensure(method_of("sdp"), table, tmp_path, teacher="teacher-b", log=logs.append)
    assert other.folder != first.folder and len(logs) > built  # another teacher: its own outputs
    (first.folder / "outputs.arrow").write_bytes(b"truncated")
    count = len(logs)
    rebuilt = ensure(method_of("sdp"), table, tmp_path, log=logs.append)
    assert rebuilt.folder == first.folder and len(logs) > count and rebuilt.rows == table.num_rows
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({first.folder.name, other.folder.name})


def test_a_training_step_on_cached_outputs_equals_the_live_one(tmp_path: Path, train_step) -> None:
    table = ragged_table()
    live, cached = method_of("sdp"), method_of("sdp")
    cache = ensure(cached, table, tmp_path)
    for method, use in ((live, False), (cached, True)):
        optimizer = torch.optim.AdamW(method.module.parameters(), lr=1e-3)
        for step, batch in enumerate(epoch(table)):
            batch = cache.attach(batch, method) if use else {k: v for k, v in batch.items()
                                                            if k != "example_ids"}
            train_step(method, batch, optimizer, step=step)
    for a, b in zip(live.student.parameters(), cached.student.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_batch_keys_split_back_into_inputs_and_teacher_outputs() -> None:
    batch = {"input_ids": torch.ones(2, 3), "labels": torch.zeros(2)}
    carried = teacher_outputs.attach(batch, {"logits": torch.ones(2, 2)})
    inputs, cached = teacher_outputs.split(carried)
    assert set(inputs) == {"input_ids", "labels"} and set(cached) == {"logits"}
    assert copy.copy(batch) == batch and "teacher.logits" not in batch


def test_the_config_caches_by_default_without_changing_config_hashes() -> None:
    from infra.experiment.config import ComputeSpec
    assert ComputeSpec().teacher_cache_mb > 0 and ComputeSpec().teacher_cache_dtype == "float16"
    assert not {"teacher_cache_mb", "teacher_cache_dtype"} & set(ComputeSpec().model_dump())
    assert ComputeSpec(teacher_cache_mb=0).model_dump()["teacher_cache_mb"] == 0
