"""Unstructured masks in three pure steps: score, select, apply.

A mask is a bool tensor shaped like its weight (True = kept). Selection is exact
(a requested sparsity gives exactly `numel - round(sparsity * numel)` kept
entries), deterministic (ties go to the lower flat index, so every DDP rank picks
the same mask from the same weights) and monotone (a pruned entry never regrows).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import Tensor, nn


def magnitude_scores(weight: Tensor) -> Tensor:
    """|w|, same shape as `weight`."""
    return weight.detach().abs()


def sensitivity_scores(weight: Tensor, grad: Tensor | None) -> Tensor:
    """First-order sensitivity |w * dL/dw|, same shape as `weight`."""
    if grad is None:
        raise ValueError("sensitivity_scores needs a gradient; run backward() first")
    return (weight.detach() * grad.detach()).abs()


def kept_count(numel: int, sparsity: float) -> int:
    """How many of `numel` entries a mask at `sparsity` keeps."""
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    return numel - round(sparsity * numel)


def _ranking_scores(scores: Tensor, previous: Tensor | None) -> Tensor:
    """Flat float32 scores [n] where NaN and already pruned entries rank last."""
    flat = scores.detach().reshape(-1).float()
    drop = torch.isnan(flat)
    if previous is not None:
        if previous.shape != scores.shape:
            raise ValueError(
                f"previous mask shape {tuple(previous.shape)} != scores shape {tuple(scores.shape)}"
            )
        drop |= ~previous.reshape(-1).bool()
    return flat.masked_fill(drop, float("-inf"))


def _top_k_mask(flat: Tensor, k: int) -> Tensor:
    """Bool [n] keeping the k highest of `flat` [n]; ties go to the lower index."""
    n = flat.numel()
    mask = torch.zeros(n, dtype=torch.bool, device=flat.device)
    if k <= 0:
        return mask
    if k >= n:
        return mask.fill_(True)
    # kthvalue is a selection, not a full sort: O(n) on the 85M weights of BERT-base.
    threshold = torch.kthvalue(flat, n - k + 1).values
    mask |= flat > threshold
    missing = k - int(mask.sum())
    tied = torch.nonzero(flat == threshold).reshape(-1)[:missing]
    mask[tied] = True
    return mask


def keep_mask(scores: Tensor, sparsity: float, previous: Tensor | None = None) -> Tensor:
    """Select the entries to keep in one matrix.

    Args:
        scores: importance, any shape [*]; higher is kept first.
        sparsity: fraction to prune, in [0, 1].
        previous: bool [*] mask from the last update; its pruned entries stay
            pruned. If it already keeps no more than the requested count, it is
            returned unchanged (masks are monotone; they never grow back).

    Returns:
        bool [*] with exactly `kept_count(scores.numel(), sparsity)` True entries
        (or `previous` unchanged, see above).
    """
    k = kept_count(scores.numel(), sparsity)
    flat = _ranking_scores(scores, previous)
    if previous is not None and k >= int(previous.sum()):
        return previous.detach().bool().clone()
    return _top_k_mask(flat, k).view(scores.shape)


def global_keep_masks(
    scores: dict[str, Tensor], sparsity: float, previous: dict[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """Select over all matrices at once: one threshold, exact total kept count.

    Args:
        scores: name -> importance [*], all on one device.
        sparsity: fraction of all entries together to prune.
        previous: name -> bool [*], same keys; pruned entries stay pruned, and if
            they already keep no more than requested they are returned unchanged.

    Returns:
        name -> bool [*] whose True entries total `kept_count(sum of numel, sparsity)`.
    """
    names = list(scores)
    if previous is not None and set(previous) != set(names):
        raise ValueError(f"previous masks have keys {sorted(previous)}, scores {sorted(names)}")
    flat = torch.cat(
        [_ranking_scores(scores[n], previous[n] if previous else None) for n in names]
    )
    k = kept_count(flat.numel(), sparsity)
    if previous is not None and k >= sum(int(previous[n].sum()) for n in names):
        return {n: previous[n].detach().bool().clone() for n in names}
    chunks = _top_k_mask(flat, k).split([scores[n].numel() for n in names])
    return {n: chunk.view(scores[n].shape) for n, chunk in zip(names, chunks)}


def local_keep_masks(
    scores: dict[str, Tensor], sparsity: float, previous: dict[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """Select per matrix: each matrix [*] reaches `sparsity` on its own (see keep_mask)."""
    if previous is not None and set(previous) != set(scores):
        raise ValueError(f"previous masks have keys {sorted(previous)}, scores {sorted(scores)}")
    return {
        name: keep_mask(s, sparsity, previous[name] if previous else None)
        for name, s in scores.items()
    }


@torch.no_grad()
def apply_masks(params: dict[str, nn.Parameter], masks: dict[str, Tensor]) -> None:
    """Zero the pruned entries of each parameter in place; idempotent.

    Args:
        params: name -> weight [*].
        masks: name -> bool [*] (True = kept), keys a subset of `params`.
    """
    unknown = set(masks) - set(params)
    if unknown:
        raise ValueError(f"masks for unknown parameters: {sorted(unknown)}")
    for name, mask in masks.items():
        # masked_fill, not mul: an inf or NaN weight still becomes an exact 0.
        params[name].masked_fill_(~mask.bool(), 0.0)


def masks_checksum(masks: dict[str, Tensor]) -> int:
    """A 63-bit digest of bool masks (names and kept positions), stable across processes.

    DDP ranks compare it to prove they prune the same entries (infra.train.ray_job).
    """
    digest = hashlib.sha256()
    for name in sorted(masks):
        digest.update(name.encode())
        digest.update(np.packbits(masks[name].detach().to("cpu", torch.bool).numpy()).tobytes())
    return int.from_bytes(digest.digest()[:8], "big") >> 1
