"""Task metrics as pure numpy functions: GLUE's and XGLUE's official ones and their scores.

Inputs are 1-D arrays of equal length: class indices for classification, real numbers for
regression. Degenerate cases return 0.0, not NaN (a constant predictor carries no
correlation), so promotion can always compare two numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike


def _pair(pred: ArrayLike, gold: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p, g = np.asarray(pred).ravel(), np.asarray(gold).ravel()
    if p.shape != g.shape or p.size == 0:
        raise ValueError(f"need two non-empty arrays of one length; got {p.size} and {g.size}")
    return p, g


def accuracy(pred: ArrayLike, gold: ArrayLike) -> float:
    p, g = _pair(pred, gold)
    return float(np.mean(p == g))


def f1(pred: ArrayLike, gold: ArrayLike, positive: int = 1) -> float:
    """Binary F1 of the positive class (GLUE's MRPC/QQP: class 1, `equivalent`/`duplicate`)."""
    p, g = _pair(pred, gold)
    tp = np.sum((p == positive) & (g == positive))
    wrong = np.sum((p == positive) != (g == positive))  # false positives + false negatives
    return float(2 * tp / (2 * tp + wrong)) if tp + wrong else 0.0


def f1_macro(pred: ArrayLike, gold: ArrayLike) -> float:
    """Unweighted mean of per-class F1 over the classes present in pred or gold."""
    p, g = _pair(pred, gold)
    return float(np.mean([f1(p, g, positive=c) for c in np.union1d(p, g)]))


def matthews_correlation(pred: ArrayLike, gold: ArrayLike) -> float:
    """Matthews correlation (multi-class form of Gorodkin 2004; the binary one for 2 classes)."""
    p, g = _pair(pred, gold)
    classes, index = np.unique(np.concatenate([g, p]), return_inverse=True)
    k, n = len(classes), len(p)
    confusion = np.zeros((k, k), dtype=np.float64)  # [gold, pred]
    np.add.at(confusion, (index[:n], index[n:]), 1.0)
    t, q = confusion.sum(axis=1), confusion.sum(axis=0)  # per-class gold and predicted counts
    cov_pg = np.trace(confusion) * n - t @ q
    denom = np.sqrt((n * n - q @ q) * (n * n - t @ t))
    return float(cov_pg / denom) if denom > 0 else 0.0


def pearson(pred: ArrayLike, gold: ArrayLike) -> float:
    p, g = _pair(pred, gold)
    dp, dg = p.astype(np.float64) - p.mean(), g.astype(np.float64) - g.mean()
    denom = np.sqrt((dp @ dp) * (dg @ dg))
    return float(dp @ dg / denom) if denom > 0 else 0.0


def ranks(values: ArrayLike) -> np.ndarray:
    """1-based ranks; tied values share the mean of their ranks ([10, 20, 20] -> [1, 2.5, 2.5])."""
    v = np.asarray(values).ravel()
    _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # the rank of each distinct value's last copy
    return ((last - (counts - 1) / 2.0)[inverse]).astype(np.float64)


def spearman(pred: ArrayLike, gold: ArrayLike) -> float:
    """Pearson correlation of the tie-averaged ranks."""
    p, g = _pair(pred, gold)
    return pearson(ranks(p), ranks(g))


METRICS = {"accuracy": accuracy, "f1": f1, "f1_macro": f1_macro,
           "matthews_correlation": matthews_correlation, "pearson": pearson, "spearman": spearman}


def compute(pred: ArrayLike, gold: ArrayLike, names: Sequence[str], score: Sequence[str]) -> dict[str, float]:
    """The named metrics plus `score`, the mean of those in `score` (GLUE's combined score,
    e.g. MRPC (accuracy + F1) / 2, STS-B (Pearson + Spearman) / 2; one metric -> itself)."""
    unknown = sorted((set(names) | set(score)) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {sorted(METRICS)}")
    out = {name: METRICS[name](pred, gold) for name in dict.fromkeys([*names, *score])}
    out["score"] = float(np.mean([out[name] for name in score]))
    return out
