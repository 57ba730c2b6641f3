"""The seed paper's analysis of pruned models: separability, weight SNR, recovery.

SDP (METHODS.md section 1) claims larger class separability, a higher signal-to-
noise ratio of the weights and faster recovery after each pruning step. METHODS.md
does not give the paper's exact definitions, so the ones here are ours and each
docstring says what is computed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pruning.targets import encoder_linear_weights

# --------------------------------------------------------------- separability


def fisher_criterion(features: Tensor, labels: Tensor) -> float:
    """Fisher's criterion trace(S_b) / trace(S_w) of labelled points.

    S_b = sum_c n_c (mu_c - mu)(mu_c - mu)^T and S_w = sum_c sum_{x in c}
    (x - mu_c)(x - mu_c)^T, so the traces are sums of squared distances and no
    d x d matrix is formed. Larger = classes further apart relative to their spread.

    Args:
        features: [N, d]; labels: [N] integer classes (at least two distinct).
    """
    x, y = features.detach().double(), labels.detach().reshape(-1)
    classes = torch.unique(y)
    if classes.numel() < 2:
        raise ValueError("the Fisher criterion needs at least two classes")
    mu = x.mean(dim=0)
    between = within = 0.0
    for c in classes:
        xc = x[y == c]
        mu_c = xc.mean(dim=0)
        between += xc.shape[0] * float((mu_c - mu).pow(2).sum())
        within += float((xc - mu_c).pow(2).sum())
    return between / within if within > 0 else math.inf


def _distances(x: Tensor, metric: str) -> Tensor:
    """Pairwise distances [N, N] of x [N, d]."""
    if metric == "cosine":
        unit = torch.nn.functional.normalize(x, dim=-1)
        return (1.0 - unit @ unit.T).clamp_min(0.0)
    if metric == "euclidean":
        return torch.cdist(x, x)
    raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")


def silhouette_score(
    features: Tensor, labels: Tensor, metric: str = "cosine", max_points: int = 2000, seed: int = 0
) -> float:
    """Mean silhouette (b - a) / max(a, b) of labelled points, in [-1, 1].

    a = mean distance to the other points of its class, b = the lowest mean
    distance to another class; points alone in their class count 0 (as in
    scikit-learn). At most `max_points` points, a fixed random subset beyond that,
    keep the [N, N] distance matrix small.

    Args:
        features: [N, d]; labels: [N] integer classes; metric: "cosine" or "euclidean".
    """
    x, y = features.detach().double(), labels.detach().reshape(-1)
    if x.shape[0] > max_points:
        keep = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:max_points]
        x, y = x[keep], y[keep]
    classes = torch.unique(y)
    if classes.numel() < 2:
        raise ValueError("the silhouette needs at least two classes")
    dist = _distances(x, metric)  # [N, N]
    onehot = (y[:, None] == classes[None, :]).double()  # [N, K]
    sizes = onehot.sum(dim=0)  # [K]
    sums = dist @ onehot  # [N, K]: summed distance from each point to each class
    own = onehot.bool()
    own_size = (onehot * sizes).sum(dim=1)  # [N]
    a = (sums * onehot).sum(dim=1) / (own_size - 1).clamp_min(1)
    b = (sums / sizes).masked_fill(own, math.inf).min(dim=1).values
    s = (b - a) / torch.maximum(a, b).clamp_min(1e-12)
    s = torch.where(own_size > 1, s, torch.zeros_like(s))
    return float(s.mean())


# --------------------------------------------------------------- weights


def weight_snr(model: nn.Module) -> float:
    """Signal-to-noise ratio of the encoder linear weights (our definition).

    Per matrix, over its kept (non-zero) weights: mean(|w|) / std(w); then the
    average over the matrices (Q, K, V, attention output, FFN in and out of every
    layer). METHODS.md names the claim ("higher signal-to-noise ratio") but not the
    paper's formula, so this is ours: how large the surviving weights are relative
    to their spread. A matrix with fewer than two kept weights is skipped.
    """
    ratios = []
    for w in encoder_linear_weights(model).values():
        kept = w.detach().double().reshape(-1)
        kept = kept[kept != 0]
        if kept.numel() < 2:
            continue
        ratios.append(float(kept.abs().mean() / kept.std().clamp_min(1e-12)))
    return sum(ratios) / len(ratios) if ratios else math.nan


# --------------------------------------------------------------- recovery

# Steps recorded after each mask update (ours): the default of every masked method's
# `recovery_steps` option.
RECOVERY_STEPS = 10


class RecoveryTracker:
    """Task loss just before each mask update and over the k steps after it.

    The training loop calls `mark_update(step, sparsity)` when a mask update at
    `step` pruned something, and `observe(step, loss)` with the training task loss
    of every step. A record holds `before` (the loss of the last step before the
    update, still under the old mask) and `after` (the losses of steps step ...
    step + k, the first one under the new mask). A record stops early at the next
    update, so with update_every < k + 1 curves are shorter than k + 1. Training
    losses are per batch, hence noisy; compare means over many updates.
    """

    def __init__(self, k: int = RECOVERY_STEPS) -> None:
        if k < 0:
            raise ValueError(f"recovery k must be >= 0, got {k}")
        self.k = k
        self.records: list[dict] = []
        self._last: tuple[int, float] | None = None  # (step, task loss)
        self._open = False

    def mark_update(self, step: int, sparsity: float) -> None:
        """A mask update at `step` (before its forward) pruned more weights."""
        self._open = False
        if self._last is None or self._last[0] != step - 1:
            return  # no loss under the old mask right before (the very first step)
        self.records.append({"step": step, "sparsity": sparsity, "before": self._last[1],
                             "after": []})
        self._open = True

    def observe(self, step: int, loss: float) -> None:
        """The task loss of optimizer step `step`."""
        self._last = (step, float(loss))
        if self._open:
            record = self.records[-1]
            if step == record["step"] + len(record["after"]):
                record["after"].append(float(loss))
            self._open = len(record["after"]) < self.k + 1

    def summary(self) -> dict[str, float]:
        """Means over records: jump (after[0] - before), residual (after[-1] - before), and
        steps to recover (first j with after[j] <= before; curve length when never)."""
        done = [r for r in self.records if r["after"]]
        if not done:
            return {"recovery_updates": 0.0}
        jump = [r["after"][0] - r["before"] for r in done]
        residual = [r["after"][-1] - r["before"] for r in done]
        steps = [next((j for j, v in enumerate(r["after"]) if v <= r["before"]), len(r["after"]))
                 for r in done]
        n = len(done)
        return {"recovery_updates": float(n), "recovery_jump": sum(jump) / n,
                "recovery_residual": sum(residual) / n, "recovery_steps": sum(steps) / n}

    def to_dict(self) -> dict:
        """JSON-ready: {"k", "records": [{"step", "sparsity", "before", "after": [...]}], "summary"}."""
        return {"k": self.k, "records": self.records, "summary": self.summary()}

    def state_dict(self) -> dict[str, Tensor]:
        """Tensors only: records [n, 4 + k + 1] (step, sparsity, before, open, after...; NaN pad)."""
        rows = torch.full((len(self.records), 5 + self.k), math.nan, dtype=torch.float64)
        for i, r in enumerate(self.records):
            is_open = self._open and i == len(self.records) - 1
            rows[i, :4] = torch.tensor([r["step"], r["sparsity"], r["before"], float(is_open)],
                                       dtype=torch.float64)
            rows[i, 4:4 + len(r["after"])] = torch.tensor(r["after"], dtype=torch.float64)
        last = torch.tensor([math.nan, math.nan] if self._last is None else list(self._last),
                            dtype=torch.float64)
        return {"records": rows, "last": last}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore what `state_dict` returned (k may differ: curves are cut to the new k)."""
        self.records, self._open = [], False
        for row in state["records"].tolist():
            after = [v for v in row[4:] if not math.isnan(v)][: self.k + 1]
            self.records.append({"step": int(row[0]), "sparsity": row[1], "before": row[2],
                                 "after": after})
            self._open = bool(row[3]) and len(after) < self.k + 1
        step, loss = state["last"].tolist()
        self._last = None if math.isnan(step) else (int(step), loss)
