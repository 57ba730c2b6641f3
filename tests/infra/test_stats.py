"""Seed statistics and the paired bootstrap, on hand-made numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from infra.evaluate import metrics
from infra.evaluate.stats import paired_bootstrap, seed_stats, verdict


def accuracy(splits) -> float:
    return metrics.accuracy(*splits["test"])


def model(pred, gold) -> dict:
    return {"test": (np.asarray(pred), np.asarray(gold))}


def test_seed_stats_are_mean_sample_std_and_count() -> None:
    s = seed_stats([0.80, 0.82, 0.84])
    assert s.mean == pytest.approx(0.82) and s.std == pytest.approx(0.02) and s.n == 3
    one = seed_stats([0.7])
    assert one.mean == 0.7 and math.isnan(one.std) and one.n == 1  # one seed: no spread to show
    with pytest.raises(ValueError):
        seed_stats([])


def test_identical_predictions_differ_by_exactly_zero() -> None:
    gold = np.arange(50) % 2
    pred = np.where(np.arange(50) % 3 == 0, 1 - gold, gold)
    diff = paired_bootstrap([model(pred, gold)], [model(pred.copy(), gold)], accuracy, resamples=200)
    assert (diff.mean, diff.low, diff.high) == (0.0, 0.0, 0.0)
    assert diff.verdict == "inconclusive"


def test_a_clear_difference_excludes_zero_either_way() -> None:
    gold = np.arange(400) % 2
    right, wrong = gold.copy(), gold.copy()
    wrong[:100] = 1 - wrong[:100]  # 25 points worse on the same examples
    better = paired_bootstrap([model(right, gold)], [model(wrong, gold)], accuracy, resamples=500)
    assert better.mean == pytest.approx(0.25) and 0 < better.low < 0.25 < better.high
    assert better.verdict == "better"
    worse = paired_bootstrap([model(wrong, gold)], [model(right, gold)], accuracy, resamples=500)
    assert worse.verdict == "worse" and worse.high < 0


def test_a_small_difference_on_few_examples_is_inconclusive() -> None:
    gold = np.arange(40) % 2
    a, b = gold.copy(), gold.copy()
    a[:6], b[3:10] = 1 - a[:6], 1 - b[3:10]  # 6 vs 7 mistakes
    diff = paired_bootstrap([model(a, gold)], [model(b, gold)], accuracy, resamples=500)
    assert diff.low < 0 < diff.high and diff.verdict == "inconclusive"


def test_the_interval_is_reproducible_with_its_seed() -> None:
    rng = np.random.default_rng(3)
    gold = rng.integers(0, 2, 120)
    a, b = model(rng.integers(0, 2, 120), gold), model(rng.integers(0, 2, 120), gold)
    first = paired_bootstrap([a], [b], accuracy, resamples=300, seed=7)
    assert paired_bootstrap([a], [b], accuracy, resamples=300, seed=7) == first
    assert paired_bootstrap([a], [b], accuracy, resamples=300, seed=8) != first


def test_seeds_are_averaged_pair_by_pair() -> None:
    gold = np.zeros(10, dtype=int)
    perfect, half = np.zeros(10, dtype=int), np.array([0, 1] * 5)
    # seed 0: candidate 1.0 vs baseline 0.5; seed 1: 0.5 vs 0.5 -> mean difference 0.25
    diff = paired_bootstrap([model(perfect, gold), model(half, gold)],
                            [model(half, gold), model(half, gold)], accuracy, resamples=100)
    assert diff.mean == pytest.approx(0.25) and diff.pairs == 2


def test_models_must_share_their_examples() -> None:
    with pytest.raises(ValueError, match="same examples"):
        paired_bootstrap([model([0, 1], [0, 1])], [model([0, 1], [1, 1])], accuracy, resamples=10)
    with pytest.raises(ValueError, match="seed pairs"):
        paired_bootstrap([model([0], [0])], [], accuracy)


def test_verdict_words() -> None:
    assert verdict(0.01, 0.03) == "better" and verdict(-0.03, -0.01) == "worse"
    assert verdict(-0.01, 0.02) == "inconclusive" and verdict(0.0, 0.0) == "inconclusive"
