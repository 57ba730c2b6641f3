"""Distillation losses shared by the methods (METHODS.md, "Shared building blocks").

Every function takes the student's tensor first and the teacher's second, and never
detaches for the caller: the methods compute teacher tensors under `torch.no_grad()`,
so gradients reach only the student (the pruned branch).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Barlow Twins standardises with BatchNorm1d(affine=False), whose epsilon is 1e-5;
# METHODS.md only says "epsilon guarded", so this is our default, not the paper's.
STANDARDISE_EPS = 1e-5
CC_LAMBDA = 5.1e-3  # METHODS.md section 1 (the Barlow Twins value)
SOFT_CE_REDUCTIONS = ("batchmean", "mean")
CorrelationTarget = Literal["identity", "teacher"]
CORRELATION_TARGETS: tuple[CorrelationTarget, ...] = ("identity", "teacher")
_MASKED_KEY = -1e9  # finite stand-in for -inf at padded keys: no inf - inf in the KL


def standardise(z: Tensor, eps: float = STANDARDISE_EPS) -> Tensor:
    """Standardise each feature over the batch: (z - mean) / sqrt(var + eps).

    Args:
        z: [N, d]. The variance is the population one (divides by N), as BatchNorm
            does, so identical inputs give C_ii = var / (var + eps), almost 1.

    Returns:
        [N, d] with zero mean and (almost) unit variance per column.
    """
    if z.ndim != 2:
        raise ValueError(f"expected [N, d] representations, got shape {tuple(z.shape)}")
    z = z.float()
    mean = z.mean(dim=0, keepdim=True)
    var = z.var(dim=0, unbiased=False, keepdim=True)
    return (z - mean) / torch.sqrt(var + eps)


def cross_correlation_parts(
    z_pruned: Tensor, z_unpruned: Tensor, eps: float = STANDARDISE_EPS,
    target: CorrelationTarget = "identity",
) -> tuple[Tensor, Tensor]:
    """The two sums of the cross-correlation loss, unweighted (METHODS.md section 1).

    C = z_p^T z_u / N on batch-standardised features [d, d], compared with a target T:
    on = sum_i (T_ii - C_ii)^2 and off = sum_{i != j} (C_ij - T_ij)^2.
    `target` "identity" (Barlow Twins): T = I, so off asks for decorrelated features.
    "teacher": T = z_u^T z_u / N, the unpruned side's own correlations on the same
    rows, so z_p = z_u zeroes both sums and their gradients whatever N, d, eps and
    however correlated the unpruned features are (the teacher is a fixed point).

    Args:
        z_pruned: [N, d] from the pruned network (gradients flow through it).
        z_unpruned: [N, d] from the unpruned network (computed without gradient).

    Returns:
        (on, off), two scalars.
    """
    if z_pruned.shape != z_unpruned.shape:
        raise ValueError(f"shapes differ: {tuple(z_pruned.shape)} vs {tuple(z_unpruned.shape)}")
    if target not in CORRELATION_TARGETS:
        raise ValueError(f"target must be one of {CORRELATION_TARGETS}, got {target!r}")
    n = z_pruned.shape[0]
    u = standardise(z_unpruned, eps)
    c = standardise(z_pruned, eps).T @ u / n  # [d, d]
    if target == "teacher":
        residual = c - u.T @ u / n
    else:
        residual = c - torch.eye(c.shape[0], device=c.device, dtype=c.dtype)
    on = torch.diagonal(residual).pow(2).sum()
    return on, residual.pow(2).sum() - on


def cross_correlation_loss(
    z_pruned: Tensor, z_unpruned: Tensor, lambda_offdiag: float = CC_LAMBDA,
    eps: float = STANDARDISE_EPS, target: CorrelationTarget = "identity",
) -> Tensor:
    """Barlow Twins cross-correlation loss (METHODS.md section 1): on + lambda * off.

    With the default `target` "identity", C = z_p^T z_u / N on batch-standardised
    features and L_cc = sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2; see
    `cross_correlation_parts` for the "teacher" target.

    Args:
        z_pruned: [N, d] from the pruned network (gradients flow through it).
        z_unpruned: [N, d] from the unpruned network (computed without gradient).
        lambda_offdiag: weight of the off-diagonal (redundancy) term; 5.1e-3 default.
        eps: variance guard of the standardisation.
        target: "identity" (Barlow Twins) or "teacher" (z_u's own correlations).

    Returns:
        Scalar loss: about 0 when both sides are the same decorrelated features (or,
        with "teacher", the same features), positive otherwise; unchanged by a positive
        per-feature scaling of either side.
    """
    on, off = cross_correlation_parts(z_pruned, z_unpruned, eps, target)
    return on + lambda_offdiag * off


def kl_logits(student: Tensor, teacher: Tensor, temperature: float = 1.0) -> Tensor:
    """KL(teacher || student) on softened distributions, times T^2 (Hinton et al.).

    Args:
        student, teacher: logits [N, C].

    Returns:
        Scalar, averaged over the batch.
    """
    t = temperature
    log_p_s = F.log_softmax(student.float() / t, dim=-1)
    log_p_t = F.log_softmax(teacher.float() / t, dim=-1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * t * t


def mse_logits(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean squared error between logits [N, C]; scalar."""
    return F.mse_loss(student.float(), teacher.float())


def cosine_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """1 - cosine similarity per example, averaged; inputs [N, d]; scalar in [0, 2]."""
    return (1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()


def soft_cross_entropy(student: Tensor, teacher: Tensor, temperature: float = 1.0,
                       reduction: Literal["batchmean", "mean"] = "batchmean") -> Tensor:
    """Cross-entropy of student logits against the teacher's probabilities (no T^2 factor).

    Per entry: -softmax(teacher / T)_c * log_softmax(student / T)_c. "batchmean" sums
    them over classes and averages over the batch (the cross-entropy of each example);
    "mean" averages over all N x C entries, as TinyBERT's code (and so SparseBERT's)
    does: `(- targets_prob * student_likelihood).mean()`, C times lighter.

    Args:
        student, teacher: logits [N, C].

    Returns:
        Scalar.
    """
    if reduction not in SOFT_CE_REDUCTIONS:
        raise ValueError(f"reduction must be one of {SOFT_CE_REDUCTIONS}, got {reduction!r}")
    targets = F.softmax(teacher.float() / temperature, dim=-1)
    entries = -(targets * F.log_softmax(student.float() / temperature, dim=-1))  # [N, C]
    return entries.mean() if reduction == "mean" else entries.sum(-1).mean()


class HiddenStateMSE(nn.Module):
    """MSE between hidden states, with a learned projection when widths differ.

    When the student's width differs from the teacher's, H_s W_proj (a bias-free
    nn.Linear [d_s -> d_t]) is compared with H_t; its weights must then be trained
    with the student (add `self.parameters()` to the optimizer).
    """

    def __init__(self, student_dim: int, teacher_dim: int) -> None:
        super().__init__()
        self.proj = (
            nn.Linear(student_dim, teacher_dim, bias=False) if student_dim != teacher_dim else None
        )

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        """student [..., d_s], teacher [..., d_t] -> scalar mean squared error."""
        if self.proj is not None:
            student = self.proj(student)
        return F.mse_loss(student.float(), teacher.float())


def hidden_states_mse(student: tuple[Tensor, ...], teacher: tuple[Tensor, ...]) -> Tensor:
    """Sum over layers of MSE(H_s, H_t); each [B, T, H], same count and width.

    With `output_hidden_states=True` a BERT returns L + 1 states, the embedding
    output first, so the sum includes it.
    """
    if len(student) != len(teacher):
        raise ValueError(f"{len(student)} student hidden states vs {len(teacher)} teacher ones")
    return sum((F.mse_loss(s.float(), t.float()) for s, t in zip(student, teacher)),
               start=torch.zeros((), device=student[0].device))


def attention_scores(query: Tensor, key: Tensor, num_heads: int, scale_dim: int | None = None) -> Tensor:
    """Pre-softmax attention scores Q K^T / sqrt(d_head) per head.

    Args:
        query, key: projected hidden states [B, T, H] (outputs of W_q and W_k).
        num_heads: h, with H = h * d_head.
        scale_dim: divide by sqrt(scale_dim) instead (a compact model cut to narrower
            heads keeps its original head's scale: CompactBertConfig.scaling_head_size).

    Returns:
        [B, h, T, T] raw scores (no mask added, no softmax).
    """
    b, t, width = query.shape
    d_head = width // num_heads
    q = query.view(b, t, num_heads, d_head).transpose(1, 2)  # [B, h, T, d]
    k = key.view(b, key.shape[1], num_heads, d_head).transpose(1, 2)  # [B, h, S, d]
    return q @ k.transpose(-1, -2) / math.sqrt(scale_dim or d_head)


def masked_scores(scores: Tensor, attention_mask: Tensor | None) -> Tensor:
    """Zero the scores of padded key positions.

    This is what the authors' TinyBERT-derived code does (it zeroes entries pushed
    below -100 by the additive key mask).

    Args:
        scores: [B, h, T, S]; attention_mask: [B, S], 1 = real token, or None.
    """
    if attention_mask is None:
        return scores
    keep = attention_mask[:, None, None, :].bool()  # [B, 1, 1, S]
    return scores.masked_fill(~keep, 0.0)


def attention_scores_mse(
    student: list[Tensor], teacher: list[Tensor], attention_mask: Tensor | None
) -> Tensor:
    """Sum over layers of MSE between pre-softmax scores [B, h, T, T], masked keys zeroed."""
    if len(student) != len(teacher):
        raise ValueError(f"{len(student)} student score maps vs {len(teacher)} teacher ones")
    total = torch.zeros((), device=student[0].device)
    for s, t in zip(student, teacher):
        total = total + F.mse_loss(masked_scores(s.float(), attention_mask),
                                   masked_scores(t.float(), attention_mask))
    return total


def attention_kl(student: Tensor, teacher: Tensor, mask: Tensor, heads: Tensor) -> Tensor:
    """KL(A_t || A_s) per attention row, averaged over real query tokens and kept heads.

    Args:
        student, teacher: pre-softmax scores [B, h, T, T] (no mask added).
        mask: [B, T], 1 = real token (padded keys get no probability).
        heads: float [h], 1 for the student's kept heads, 0 for pruned ones (whose
            scores are all 0: they attend uniformly and say nothing about the teacher).
    """
    keys = mask[:, None, None, :].bool()
    log_s = F.log_softmax(student.float().masked_fill(~keys, _MASKED_KEY), dim=-1)
    log_t = F.log_softmax(teacher.float().masked_fill(~keys, _MASKED_KEY), dim=-1)
    per_row = (log_t.exp() * (log_t - log_s)).sum(-1)  # [B, h, T]
    rows = mask[:, None, :].float() * heads.to(per_row.device)[None, :, None]
    return (per_row * rows).sum() / rows.sum().clamp_min(1.0)
