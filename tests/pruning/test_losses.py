from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pruning import losses


def _features(n: int = 512, d: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def _cc_by_hand(zp: torch.Tensor, zu: torch.Tensor, lam: float) -> float:
    zp = (zp - zp.mean(0)) / torch.sqrt(zp.var(0, unbiased=False) + losses.STANDARDISE_EPS)
    zu = (zu - zu.mean(0)) / torch.sqrt(zu.var(0, unbiased=False) + losses.STANDARDISE_EPS)
    n, d = zp.shape
    total = 0.0
    for i in range(d):
        for j in range(d):
            c = float((zp[:, i] * zu[:, j]).sum()) / n
            total += (1 - c) ** 2 if i == j else lam * c * c
    return total


def test_cross_correlation_matches_the_formula():
    zp, zu = _features(64, 5, 0), _features(64, 5, 1) + 0.5 * _features(64, 5, 0)
    got = losses.cross_correlation_loss(zp, zu, lambda_offdiag=0.1)
    assert float(got) == pytest.approx(_cc_by_hand(zp, zu, 0.1), rel=1e-5)


def test_cross_correlation_near_zero_for_identical_inputs_and_positive_otherwise():
    z = _features()
    same = float(losses.cross_correlation_loss(z, z.clone()))
    other = float(losses.cross_correlation_loss(z, _features(seed=1)))
    assert 0.0 <= same < 1e-2  # the off-diagonal term only sees chance correlations
    assert other > 5.0  # about d = 8: the diagonal correlations are ~0


def test_cross_correlation_is_invariant_to_per_feature_scaling_and_shift():
    zp, zu = _features(seed=0), _features(seed=0) + 0.3 * _features(seed=2)
    g = torch.Generator().manual_seed(3)
    scale_p, scale_u = torch.rand(8, generator=g) * 5 + 0.5, torch.rand(8, generator=g) * 5 + 0.5
    base = losses.cross_correlation_loss(zp, zu)
    scaled = losses.cross_correlation_loss(zp * scale_p + 3.0, zu * scale_u - 1.0)
    assert float(scaled) == pytest.approx(float(base), rel=1e-4)


def test_cross_correlation_gradient_reaches_only_the_pruned_side():
    zp, zu = _features(32, 4, 0).requires_grad_(), _features(32, 4, 1).requires_grad_()
    losses.cross_correlation_loss(zp, zu.detach()).backward()
    assert zp.grad is not None and zp.grad.abs().sum() > 0 and zu.grad is None


def test_cross_correlation_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes"):
        losses.cross_correlation_loss(_features(8, 4), _features(8, 5))


def test_logit_losses():
    s, t = _features(16, 3, 0), _features(16, 3, 1)
    assert float(losses.kl_logits(s, s)) == pytest.approx(0.0, abs=1e-6)
    assert float(losses.kl_logits(s, t)) > 0
    p_t = F.softmax(t, -1)
    entropy = float(-(p_t * F.log_softmax(t, -1)).sum(-1).mean())
    # soft CE = KL(teacher || student) + H(teacher) at T = 1
    assert float(losses.soft_cross_entropy(s, t)) == pytest.approx(
        float(losses.kl_logits(s, t)) + entropy, rel=1e-5)
    # T^2 scaling keeps KL gradients comparable across temperatures
    assert float(losses.kl_logits(s, t, temperature=2.0)) == pytest.approx(
        4 * float(F.kl_div(F.log_softmax(s / 2, -1), F.softmax(t / 2, -1), reduction="batchmean")),
        rel=1e-5)
    assert float(losses.mse_logits(s, t)) == pytest.approx(float(((s - t) ** 2).mean()))
    assert float(losses.cosine_loss(s, 3 * s)) == pytest.approx(0.0, abs=1e-6)
    assert float(losses.cosine_loss(s, -s)) == pytest.approx(2.0)


def test_hidden_state_mse_projects_only_when_widths_differ():
    same = losses.HiddenStateMSE(8, 8)
    assert same.proj is None and not list(same.parameters())
    h = _features(6, 8).view(2, 3, 8)
    assert float(same(h, h)) == 0.0
    wide = losses.HiddenStateMSE(8, 12)
    out = wide(h, torch.zeros(2, 3, 12))
    out.backward()
    assert wide.proj.weight.grad is not None and wide.proj.weight.shape == (12, 8)
    states = (h, h + 1)
    assert float(losses.hidden_states_mse(states, (h, h))) == pytest.approx(1.0)


def test_attention_scores_and_masked_positions():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 4, 6, generator=g), torch.randn(2, 4, 6, generator=g)
    scores = losses.attention_scores(q, k, num_heads=2)  # d_head 3
    assert scores.shape == (2, 2, 4, 4)
    by_hand = (q[0, 1, 3:6] @ k[0, 2, 3:6]) / math.sqrt(3)  # example 0, head 1, i=1, j=2
    assert float(scores[0, 1, 1, 2]) == pytest.approx(float(by_hand), rel=1e-5)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    other = scores.clone()
    other[0, :, :, 3] += 5.0  # differ only at padded keys
    other[1, :, :, 2:] -= 7.0
    assert float(losses.attention_scores_mse([scores], [other], mask)) == 0.0
    assert float(losses.attention_scores_mse([scores], [other], None)) > 0.0
    assert bool((losses.masked_scores(scores, mask)[1, :, :, 2:] == 0).all())


def test_soft_cross_entropy_averages_over_batch_and_classes_when_asked():
    # SparseBERT's authors (TinyBERT's code): (- targets_prob * student_likelihood).mean(),
    # a mean over N x C entries, C times lighter than the per-example sum.
    s = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 1.0]])
    t = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 0.0]])
    p_t, log_p_s = torch.softmax(t, -1), torch.log_softmax(s, -1)
    entries = [-float(p_t[n, c] * log_p_s[n, c]) for n in range(2) for c in range(3)]
    assert float(losses.soft_cross_entropy(s, t, reduction="mean")) == pytest.approx(
        sum(entries) / 6, rel=1e-6)
    assert float(losses.soft_cross_entropy(s, t)) == pytest.approx(sum(entries) / 2, rel=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        losses.soft_cross_entropy(s, t, reduction="sum")


def test_cross_correlation_with_the_teachers_target_has_the_teacher_as_fixed_point():
    # N = 6 < d = 10, correlated features and one near-constant feature (variance << eps):
    # the identity target has a floor and pushes; the teacher's own correlations do not.
    z = _features(6, 10, 0) @ (torch.eye(10) + 0.5 * _features(10, 10, 1))
    z[:, 3] = 1.0 + 1e-5 * _features(6, 1, 2)[:, 0]
    for target, zero in (("identity", False), ("teacher", True)):
        zp = z.clone().requires_grad_()
        on, off = losses.cross_correlation_parts(zp, z, target=target)
        (grad,) = torch.autograd.grad(on + 0.1 * off, zp)
        assert (float((on + off).detach()) < 1e-10) is zero and (float(grad.abs().max()) < 1e-6) is zero
    zp, zu = _features(64, 5, 0), _features(64, 5, 1) + 0.5 * _features(64, 5, 0)
    on, off = losses.cross_correlation_parts(zp, zu)
    assert float(on + 0.1 * off) == pytest.approx(_cc_by_hand(zp, zu, 0.1), rel=1e-5)
    with pytest.raises(ValueError, match="target"):
        losses.cross_correlation_parts(zp, zu, target="zero")
