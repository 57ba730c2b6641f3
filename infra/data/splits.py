"""Train/dev/test splits of a validated frame: stratified, seeded, capped.

Benchmarks keep their own evaluation sets. GLUE hides its test labels: dev is carved out of
its training set and each of its validation sets becomes a test split. XGLUE brings labelled
dev and test sets per language (see infra/data/benchmarks.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from infra.data.sources import DataError, TaskSource

SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class SplitPlan:
    """How to split a task's rows: the splitter's plain arguments, built from a config's
    `split` by infra.experiment.preflight.split_spec (the defaults live in the schema)."""

    dev_fraction: float
    test_fraction: float
    seed: int
    max_train_examples: int | None
    max_eval_examples: int | None  # caps dev and test each


def _allocate(counts: dict[int, int], total: int) -> dict[int, int]:
    """Split `total` over classes in proportion to counts (largest remainder, so sums are exact)."""
    n = sum(counts.values())
    quotas = {c: k * total / n if n else 0.0 for c, k in counts.items()}
    out = {c: math.floor(q) for c, q in quotas.items()}
    by_remainder = sorted(counts, key=lambda c: (-(quotas[c] - out[c]), c))
    for c in by_remainder[: total - sum(out.values())]:
        out[c] += 1
    return out


def _by_class(labels: np.ndarray, rng: np.random.Generator) -> dict[int, np.ndarray]:
    # Regression targets are stratified by their integer part (STS-B: 0-1, 1-2, ..., 5).
    strata = np.floor(labels).astype(np.int64) if np.issubdtype(labels.dtype, np.floating) else labels
    return {int(c): rng.permutation(np.flatnonzero(strata == c)) for c in np.unique(strata)}


def _take(parts: dict[int, np.ndarray], cap: int | None) -> np.ndarray:
    # Parts are already shuffled per class, so a prefix is a stratified random sample.
    total = sum(len(p) for p in parts.values())
    if cap is not None and total > cap:
        keep = _allocate({c: len(p) for c, p in parts.items()}, cap)
        parts = {c: p[: keep[c]] for c, p in parts.items()}
    return np.sort(np.concatenate([np.empty(0, np.int64), *parts.values()]))


def _check_spec(spec: SplitPlan) -> None:
    fractions = (spec.dev_fraction, spec.test_fraction)
    if min(fractions) < 0 or sum(fractions) >= 1:
        raise DataError(f"split fractions dev={spec.dev_fraction} test={spec.test_fraction}: each must be "
                        ">= 0 and together < 1")
    for name in ("max_train_examples", "max_eval_examples"):
        cap = getattr(spec, name)
        if cap is not None and cap < 1:
            raise DataError(f"split {name}={cap}: must be a positive number or null")


def split(frame: pd.DataFrame, spec: SplitPlan) -> dict[str, pd.DataFrame]:
    """Train/dev/test, stratified by label and fixed by spec.seed. Rows keep the input's index
    and order; caps take a stratified random subset of each split."""
    _check_spec(spec)
    by_class = _by_class(frame["label"].to_numpy(), np.random.default_rng(spec.seed))
    counts = {c: len(idx) for c, idx in by_class.items()}
    dev_k = _allocate(counts, round(len(frame) * spec.dev_fraction))
    test_k = _allocate(counts, round(len(frame) * spec.test_fraction))
    parts: dict[str, dict[int, np.ndarray]] = {s: {} for s in SPLITS}
    for c, idx in by_class.items():
        d, t = dev_k[c], min(test_k[c], len(idx) - dev_k[c])
        parts["dev"][c], parts["test"][c], parts["train"][c] = idx[:d], idx[d : d + t], idx[d + t :]
    caps = {"train": spec.max_train_examples, "dev": spec.max_eval_examples, "test": spec.max_eval_examples}
    out = {s: frame.iloc[_take(parts[s], caps[s])] for s in SPLITS}
    fractions = {"train": 1.0, "dev": spec.dev_fraction, "test": spec.test_fraction}
    for s, part in out.items():
        if part.empty and fractions[s] > 0:
            raise DataError(f"split {s!r} is empty: {len(frame)} rows are too few for {fractions[s]}")
    return out


def cap(frame: pd.DataFrame, limit: int | None, seed: int) -> pd.DataFrame:
    """A stratified random subset of at most `limit` rows, in the input's order."""
    return frame.iloc[_take(_by_class(frame["label"].to_numpy(), np.random.default_rng(seed)), limit)]


def model_splits(frame: pd.DataFrame, source: TaskSource, spec: SplitPlan) -> dict[str, pd.DataFrame]:
    """The splits a model sees: train, dev, test, then a benchmark's further evaluation sets."""
    if source.kind not in ("glue", "xglue"):
        return split(frame, spec)
    # Benchmarks hide their test labels: dev comes out of train, their validation sets are our tests.
    train_name = source.task.train_split if source.task else "train"
    evals = source.task.eval_splits if source.task else (("test", "validation"),)
    train = frame[frame["glue_split"] == train_name]
    if any(name == "dev" for name, _ in evals):  # the benchmark has a labelled dev set of its own
        parts = {"train": cap(train, spec.max_train_examples, spec.seed)}
    else:
        parts = split(train, replace(spec, test_fraction=0.0))
    for name, file_split in evals:
        parts[name] = cap(frame[frame["glue_split"] == file_split], spec.max_eval_examples, spec.seed)
    return {name: parts[name] for name in (*SPLITS, *parts) if name in parts}  # train, dev, test first
