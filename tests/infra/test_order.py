"""Length-bucketed batches (infra.data.order): deterministic, complete, resumable, less padding."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from infra import data
from infra.data.order import MEGABATCH, rank_order
from infra.train import loop


def skewed_table(n: int, seed: int = 0) -> pa.Table:
    """Rows of 3 to 60 tokens, most short and a few long (as review sentences are); the
    second token is the row's index, so a batch tells which rows it holds."""
    rng = np.random.default_rng(seed)
    lengths = np.minimum(3 + rng.geometric(0.08, n), 60)
    ids = [[101, row, *([7] * (int(k) - 2))] for row, k in enumerate(lengths)]
    return pa.table({"input_ids": pa.array(ids, pa.list_(pa.int32())),
                     "label": pa.array(rng.integers(0, 2, n), pa.int64())})


def epoch(table: pa.Table, *, bucketed: bool, seed: int = 1, e: int = 0, rank: int = 0, world: int = 1,
          batch_size: int = 8, drop_last: bool = True) -> list[dict]:
    return list(data.batches(table, batch_size, shuffle=True, seed=seed, epoch=e, rank=rank,
                             world_size=world, drop_last=drop_last, length_buckets=bucketed,
                             example_ids=True))


def rows(batch_list: list[dict]) -> list[int]:
    return [int(i) for b in batch_list for i in b["input_ids"][:, 1]]


def test_unbucketed_order_is_the_one_batches_always_gave() -> None:
    n, bs, world = 53, 4, 3
    for rank in range(world):
        order = np.random.default_rng([5, 2]).permutation(n)
        per_rank = n // world
        old = order[: per_rank * world][rank::world][: (per_rank // bs) * bs]
        new = rank_order(n, bs, shuffle=True, seed=5, epoch=2, rank=rank, world_size=world, drop_last=True)
        assert new.tolist() == old.tolist()


def test_bucketed_batches_are_deterministic_per_seed_and_epoch_and_carry_their_rows() -> None:
    table = skewed_table(300)
    first = epoch(table, bucketed=True)
    assert rows(first) == rows(epoch(table, bucketed=True))
    assert rows(first) != rows(epoch(table, bucketed=True, e=1))
    assert rows(first) != rows(epoch(table, bucketed=True, seed=2))
    for b in first:  # example_ids are the rows in the table, in the batch's order
        assert b["example_ids"].tolist() == b["input_ids"][:, 1].tolist()


@pytest.mark.parametrize("drop_last", [False, True])
def test_every_example_once_per_epoch_across_ranks(drop_last: bool) -> None:
    table, world, bs = skewed_table(1003), 3, 8
    shards = [epoch(table, bucketed=True, rank=r, world=world, batch_size=bs, drop_last=drop_last)
              for r in range(world)]
    expected = data.num_batches(table, bs, world_size=world, drop_last=drop_last)
    assert [len(s) for s in shards] == [expected] * world
    seen = [rows(s) for s in shards]
    flat = [i for s in seen for i in s]
    assert len(flat) == len(set(flat))  # disjoint, nobody twice
    per_rank = 1003 // world
    assert len(flat) == world * (per_rank - per_rank % bs if drop_last else per_rank)
    # Without drop_last only the world-size remainder sits out, as unbucketed.
    unbucketed = {i for r in range(world) for i in rows(epoch(table, bucketed=False, rank=r, world=world,
                                                                 batch_size=bs, drop_last=drop_last))}
    assert set(flat) == unbucketed


def test_ranks_step_through_batches_of_similar_length_together() -> None:
    table, world = skewed_table(2000), 2
    shards = [epoch(table, bucketed=True, rank=r, world=world) for r in range(world)]
    widths = np.array([[b["input_ids"].shape[1] for b in s] for s in shards])  # [world, batches]
    assert np.abs(widths[0] - widths[1]).mean() < 3


def test_bucketing_pads_less_on_skewed_lengths() -> None:
    table = skewed_table(2000)

    def padded(batch_list: list[dict]) -> int:
        return sum(b["input_ids"].numel() for b in batch_list)

    real = sum(int(b["attention_mask"].sum()) for b in epoch(table, bucketed=False))
    plain, bucketed = padded(epoch(table, bucketed=False)), padded(epoch(table, bucketed=True))
    assert real == sum(int(b["attention_mask"].sum()) for b in epoch(table, bucketed=True))
    assert bucketed < 0.75 * plain and bucketed < 1.15 * real


def test_batches_are_random_in_composition_and_order() -> None:
    table = skewed_table(2000)
    widths = [b["input_ids"].shape[1] for b in epoch(table, bucketed=True)]
    assert widths != sorted(widths) and widths != sorted(widths, reverse=True)  # batch order shuffled
    # Equal-length examples land in different batches in different epochs.
    def pairs(batch_list: list[dict]) -> set[frozenset[int]]:
        return {frozenset(b["input_ids"][:, 1].tolist()) for b in batch_list}
    assert len(pairs(epoch(table, bucketed=True)) & pairs(epoch(table, bucketed=True, e=1))) < 5


def test_a_megabatch_run_bounds_how_far_an_example_moves() -> None:
    n, bs = 1000, 4
    lengths = np.arange(n)[::-1]  # sorting everything would reverse the epoch
    order = rank_order(n, bs, shuffle=False, seed=0, epoch=0, rank=0, world_size=1, drop_last=True,
                       lengths=lengths)
    run = bs * MEGABATCH
    assert sorted(order.tolist()) == list(range(n))
    assert all(i // run == pos // run for pos, i in enumerate(order.tolist()))


@pytest.mark.parametrize("bucketed", [False, True])
def test_resumed_stream_meets_the_same_batches(bucketed: bool) -> None:
    table = skewed_table(200)
    per_epoch = data.num_batches(table, 8, drop_last=True)

    def stream(start: int):
        return loop.stream_epochs(lambda e: epoch(table, bucketed=bucketed, e=e), start=start,
                                  batches_per_epoch=per_epoch)

    full = [rows([b]) for _, b in zip(range(2 * per_epoch), stream(0))]
    start = per_epoch + 7  # mid second epoch
    resumed = [rows([b]) for _, b in zip(range(per_epoch - 7), stream(start))]
    assert resumed == full[start:]


def test_the_config_buckets_by_default_and_keeps_old_job_ids() -> None:
    from infra.experiment.config import TrainSpec
    assert TrainSpec().length_buckets is True
    assert "length_buckets" not in TrainSpec().model_dump()  # ids of configs without the key stay
    assert TrainSpec(length_buckets=False).model_dump()["length_buckets"] is False
