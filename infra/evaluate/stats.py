"""Seed statistics and the paired bootstrap: which differences between grid rows are noise.

Pure numpy. One model's predictions are `Splits`: split -> (pred [N], gold [N]) in example-id
order, so two models' arrays pair example by example. The seed spread says how much training
noise moves a metric; the paired bootstrap says how much the choice of test examples does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Splits = Mapping[str, tuple[np.ndarray, np.ndarray]]  # split -> (pred [N], gold [N])
Statistic = Callable[[Splits], float]  # e.g. test accuracy of one model's predictions

RESAMPLES = 2000
CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class SeedStats:
    """A metric over the seeds of one grid row."""

    mean: float
    std: float  # sample standard deviation (ddof 1); NaN for a single seed
    n: int


def seed_stats(values: Sequence[float]) -> SeedStats:
    """Mean, sample standard deviation and count of one metric over seeds."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("seed_stats needs at least one value")
    std = float(np.std(v, ddof=1)) if v.size > 1 else math.nan
    return SeedStats(float(np.mean(v)), std, int(v.size))


@dataclass(frozen=True)
class PairedDifference:
    """candidate - baseline on the same examples, with a percentile bootstrap interval."""

    mean: float  # mean over seed pairs of the per-seed difference, on the full split(s)
    low: float
    high: float
    pairs: int  # seed pairs averaged

    @property
    def verdict(self) -> str:
        return verdict(self.low, self.high)


def verdict(low: float, high: float) -> str:
    """The interval in a word: better or worse when it excludes 0, else inconclusive."""
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "inconclusive"


def _sizes(models: Sequence[Splits]) -> dict[str, int]:
    """Every model's split lengths, checked equal (and its golds too: pairing needs the same examples)."""
    first = models[0]
    sizes = {split: len(gold) for split, (_, gold) in first.items()}
    for model in models[1:]:
        if set(model) != set(first):
            raise ValueError(f"models cover different splits: {sorted(model)} vs {sorted(first)}")
        for split, (pred, gold) in model.items():
            if len(pred) != sizes[split] or not np.array_equal(gold, first[split][1]):
                raise ValueError(f"split {split!r}: models were not evaluated on the same examples")
    return sizes


def _take(model: Splits, index: Mapping[str, np.ndarray]) -> Splits:
    return {split: (pred[index[split]], gold[index[split]]) for split, (pred, gold) in model.items()}


def paired_bootstrap(candidates: Sequence[Splits], baselines: Sequence[Splits], statistic: Statistic,
                     resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED,
                     confidence: float = CONFIDENCE) -> PairedDifference:
    """The difference statistic(candidate) - statistic(baseline), averaged over seed pairs
    (candidates[i] and baselines[i] share a seed), and its bootstrap interval.

    Each resample draws the examples of every split with replacement, the same draw for every
    model and seed, so the interval reflects which test examples were sampled, not training
    noise (the seed spread shows that). Reproducible: the draws depend on `seed` only.
    """
    if not candidates or len(candidates) != len(baselines):
        raise ValueError(f"need seed pairs; got {len(candidates)} candidates, {len(baselines)} baselines")
    sizes = _sizes([*candidates, *baselines])
    pairs = list(zip(candidates, baselines))

    def difference(index: Mapping[str, np.ndarray] | None) -> float:
        return float(np.mean([statistic(c if index is None else _take(c, index))
                              - statistic(b if index is None else _take(b, index)) for c, b in pairs]))

    rng = np.random.default_rng(seed)
    draws = np.array([difference({split: rng.integers(0, n, n) for split, n in sizes.items()})
                      for _ in range(resamples)])
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    return PairedDifference(difference(None), float(low), float(high), len(pairs))
