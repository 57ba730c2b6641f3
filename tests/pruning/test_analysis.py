from __future__ import annotations

import math

import pytest
import torch

from pruning.analysis import RecoveryTracker, fisher_criterion, silhouette_score, weight_snr
from pruning.methods.gmp import GradualMagnitude
from pruning.targets import encoder_linear_weights


def _blobs(distance: float, n: int = 60, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2 * n, 4, generator=g)
    y = torch.arange(2 * n) % 2
    x[y == 1, 0] += distance
    return x, y


def _silhouette_by_hand(x: torch.Tensor, y: torch.Tensor, metric: str) -> float:
    if metric == "cosine":
        u = torch.nn.functional.normalize(x.double(), dim=-1)
        d = 1 - u @ u.T
    else:
        d = torch.cdist(x.double(), x.double())
    values = []
    for i in range(len(y)):
        same = (y == y[i]).clone()
        same[i] = False
        if same.sum() == 0:
            values.append(0.0)
            continue
        a = float(d[i, same].mean())
        b = min(float(d[i, y == c].mean()) for c in torch.unique(y) if c != y[i])
        values.append((b - a) / max(a, b))
    return sum(values) / len(values)


def test_fisher_criterion_matches_the_scatter_matrices():
    x, y = _blobs(3.0)
    mu = x.mean(0)
    s_b = torch.zeros(4, 4)
    s_w = torch.zeros(4, 4)
    for c in (0, 1):
        xc = x[y == c]
        d = (xc.mean(0) - mu)[:, None]
        s_b += len(xc) * d @ d.T
        s_w += (xc - xc.mean(0)).T @ (xc - xc.mean(0))
    assert fisher_criterion(x, y) == pytest.approx(float(s_b.trace() / s_w.trace()), rel=1e-5)
    assert fisher_criterion(*_blobs(6.0)) > fisher_criterion(*_blobs(1.0))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_silhouette_matches_a_direct_computation(metric):
    x, y = _blobs(2.0, n=15)
    y[0] = 2  # a singleton class counts 0
    assert silhouette_score(x, y, metric) == pytest.approx(_silhouette_by_hand(x, y, metric), abs=1e-9)
    far, near = silhouette_score(*_blobs(8.0), metric), silhouette_score(*_blobs(0.0), metric)
    assert -1 <= near < far <= 1 and far > 0.3


def test_silhouette_subsamples_large_sets_deterministically():
    x, y = _blobs(3.0, n=600)
    assert silhouette_score(x, y, max_points=200) == silhouette_score(x, y, max_points=200)


def test_separability_needs_two_classes():
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match="two classes"):
        fisher_criterion(x, torch.zeros(10))
    with pytest.raises(ValueError, match="two classes"):
        silhouette_score(x, torch.zeros(10))


def test_weight_snr_is_mean_abs_over_std_of_kept_weights(tiny_bert):
    model = tiny_bert()
    weights = encoder_linear_weights(model)
    with torch.no_grad():
        for w in weights.values():  # half zeros (pruned), then 1 and -3 alternating
            w.copy_(torch.tensor([1.0, -3.0, 0.0, 0.0]).repeat(w.numel() // 4).view_as(w))
    # kept values {1, -3}: mean |w| = 2, sample std = 2 * sqrt(k / (k - 1)) for k kept
    expected = [1 / math.sqrt((w.numel() / 2) / (w.numel() / 2 - 1)) for w in weights.values()]
    assert weight_snr(model) == pytest.approx(sum(expected) / len(expected), rel=1e-9)


def test_recovery_tracker_records_before_and_after_each_update():
    tracker = RecoveryTracker(k=2)
    losses = {0: 1.0, 1: 0.9, 2: 2.0, 3: 1.5, 4: 0.8, 5: 0.7, 6: 3.0, 7: 0.6}
    for step, loss in losses.items():
        if step in (2, 6):
            tracker.mark_update(step, sparsity=0.1 * step)
        tracker.observe(step, loss)
    assert tracker.records == [
        {"step": 2, "sparsity": 0.2, "before": 0.9, "after": [2.0, 1.5, 0.8]},
        {"step": 6, "sparsity": pytest.approx(0.6), "before": 0.7, "after": [3.0, 0.6]},
    ]
    summary = tracker.summary()
    assert summary["recovery_updates"] == 2
    assert summary["recovery_jump"] == pytest.approx(((2.0 - 0.9) + (3.0 - 0.7)) / 2)
    assert summary["recovery_steps"] == pytest.approx((2 + 1) / 2)
    fresh = RecoveryTracker(k=2)
    fresh.load_state_dict(tracker.state_dict())
    fresh.observe(8, 0.5)  # the open record continues after a resume
    tracker.observe(8, 0.5)
    assert fresh.records == tracker.records and fresh.records[-1]["after"] == [3.0, 0.6, 0.5]


def test_a_record_stops_at_the_next_update():
    tracker = RecoveryTracker(k=5)
    for step in range(6):
        if step in (1, 3):
            tracker.mark_update(step, 0.5)
        tracker.observe(step, float(step))
    assert [len(r["after"]) for r in tracker.records] == [2, 3]


def test_gmp_records_a_recovery_curve(tiny_bert, make_batch, train_step):
    method = GradualMagnitude(tiny_bert(), final_sparsity=0.8, total_steps=12, update_every=3,
                              recovery_steps=2)
    opt = torch.optim.AdamW(method.student.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    for step in range(12):
        train_step(method, make_batch(generator), opt, step=step)
    assert [r["step"] for r in method.recovery.records] == [3, 6, 8]
    assert [len(r["after"]) for r in method.recovery.records] == [3, 2, 3]
    assert method.recovery.to_dict()["summary"]["recovery_updates"] == 3
