"""infra/evaluate/metrics.py: every metric against a value worked out by hand (the sums are in comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from infra.evaluate import metrics

# Binary case used throughout: tp = 2 (rows 0, 3), tn = 1 (row 1), fp = 1 (row 2), fn = 1 (row 4).
PRED = [1, 0, 1, 1, 0]
GOLD = [1, 0, 0, 1, 1]


def test_accuracy() -> None:
    assert metrics.accuracy(PRED, GOLD) == pytest.approx(3 / 5)


def test_f1_of_the_positive_class() -> None:
    # 2tp / (2tp + fp + fn) = 4 / 6
    assert metrics.f1(PRED, GOLD) == pytest.approx(4 / 6)
    # Class 0 as positive: tp = 1, fp = 1 (row 4), fn = 1 (row 2) -> 2 / 4
    assert metrics.f1(PRED, GOLD, positive=0) == pytest.approx(0.5)
    assert metrics.f1_macro(PRED, GOLD) == pytest.approx((4 / 6 + 0.5) / 2)
    assert metrics.f1([0, 0], [0, 0]) == 0.0  # no positive anywhere: 0, not a division error


def test_matthews_correlation_binary() -> None:
    # (tp tn - fp fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (2 - 1) / sqrt(3 * 3 * 2 * 2) = 1/6
    assert metrics.matthews_correlation(PRED, GOLD) == pytest.approx(1 / 6)
    assert metrics.matthews_correlation(GOLD, GOLD) == pytest.approx(1.0)
    assert metrics.matthews_correlation([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx(-1.0)
    assert metrics.matthews_correlation([1, 1, 1], [1, 0, 1]) == 0.0  # a constant predictor


def test_matthews_correlation_multiclass() -> None:
    # Confusion [gold, pred]: (0,0)=1, (1,1)=2, (1,2)=1, (2,2)=1, (2,0)=1. trace c = 4, n = 6,
    # gold counts t = [1, 3, 2], pred counts p = [2, 2, 2], t.p = 12:
    # (c n - t.p) / sqrt((n^2 - p.p)(n^2 - t.t)) = (24 - 12) / sqrt(24 * 22)
    value = metrics.matthews_correlation([0, 1, 2, 2, 1, 0], [0, 1, 2, 1, 1, 2])
    assert value == pytest.approx(12 / math.sqrt(24 * 22))


def test_pearson() -> None:
    # dx = [-1.5, -0.5, 0.5, 1.5], dy = [-3, -1, 0, 4]: sum dx dy = 11, sum dx^2 = 5, sum dy^2 = 26
    assert metrics.pearson([1, 2, 3, 4], [2, 4, 5, 9]) == pytest.approx(11 / math.sqrt(130))
    assert metrics.pearson([3, 3, 3], [1, 2, 3]) == 0.0  # constant: no correlation, not NaN


def test_ranks_average_ties() -> None:
    assert metrics.ranks([10, 20, 20]).tolist() == [1.0, 2.5, 2.5]
    assert metrics.ranks([3, 1, 3, 3]).tolist() == [3.0, 1.0, 3.0, 3.0]  # 3s share ranks 2, 3, 4


def test_spearman_with_ties() -> None:
    # ranks x = [1, 2.5, 2.5, 4], y = [1, 3, 2, 4]; dx = [-1.5, 0, 0, 1.5], dy = [-1.5, .5, -.5, 1.5]
    # sum dx dy = 4.5, sum dx^2 = 4.5, sum dy^2 = 5 -> 4.5 / sqrt(22.5) = 3 / sqrt(10)
    assert metrics.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(3 / math.sqrt(10))
    assert metrics.spearman([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)  # monotone


def test_combined_scores_follow_glue() -> None:
    mrpc = metrics.compute(PRED, GOLD, ("accuracy", "f1"), ("accuracy", "f1"))
    assert mrpc == pytest.approx({"accuracy": 0.6, "f1": 4 / 6, "score": (0.6 + 4 / 6) / 2})
    stsb = metrics.compute([1, 2, 3, 4], [2, 4, 5, 9], ("pearson", "spearman"), ("pearson", "spearman"))
    assert stsb["score"] == pytest.approx((11 / math.sqrt(130) + 1.0) / 2)
    cola = metrics.compute(PRED, GOLD, ("matthews_correlation", "accuracy"), ("matthews_correlation",))
    assert cola["score"] == pytest.approx(1 / 6)
    with pytest.raises(ValueError, match="unknown metric.*ndcg"):
        metrics.compute(PRED, GOLD, ("ndcg",), ("accuracy",))
    with pytest.raises(ValueError, match="one length"):
        metrics.accuracy([1, 0], [1])


def test_agrees_with_scipy_and_sklearn_where_installed() -> None:
    stats = pytest.importorskip("scipy.stats")
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 6, 50).astype(float), rng.normal(size=50)  # x has many ties
    assert metrics.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)
    assert metrics.pearson(x, y) == pytest.approx(stats.pearsonr(x, y).statistic)
    p, g = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
    assert metrics.matthews_correlation(p, g) == pytest.approx(sk.matthews_corrcoef(g, p))
    assert metrics.f1(p % 2, g % 2) == pytest.approx(sk.f1_score(g % 2, p % 2))
