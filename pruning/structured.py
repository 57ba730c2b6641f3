"""Structured pruning of BERT in three pure steps: score, select, apply.

  groups: which dimension of which parameter each group (hidden, attention.<i>,
    ffn.<i>) indexes, and StructuredMasks, one bool mask per group (pruning.groups);
  score: raw_group_scores from the gradients, GroupScores to smooth them
    (pruning.group_scores);
  select: the masks keeping the best-scored groups at given widths (here), the
    widths from a parameter budget or a spec, reached along a CubicSchedule
    (pruning.sizing);
  apply: mask the model, or slice it into a compact one (pruning.surgery).

The names of the groups, score and sizing modules can be imported from here too.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pruning.compact_config import Widths
from pruning.group_scores import GroupScores, raw_group_scores
from pruning.groups import StructuredMasks, group_layout
from pruning.masks import keep_mask
from pruning.sizing import scheduled_widths, target_widths, widths_from

__all__ = [
    "GroupScores",
    "StructuredMasks",
    "group_layout",
    "keep_top",
    "raw_group_scores",
    "scheduled_widths",
    "select_masks",
    "target_widths",
    "widths_from",
]


def keep_top(scores: Tensor, k: int, previous: Tensor | None = None) -> Tensor:
    """Bool [n] keeping the k best of `scores` [n]; ties to the lower index.

    Monotone like pruning.masks.keep_mask: entries pruned in `previous` stay pruned,
    and a `previous` keeping k or fewer is returned unchanged.
    """
    n = scores.numel()
    if not 0 <= k <= n:
        raise ValueError(f"cannot keep {k} of {n} groups")
    if n == 0:
        return torch.zeros(0, dtype=torch.bool, device=scores.device)
    return keep_mask(scores, (n - k) / n, previous)


def select_masks(
    scores: dict[str, Tensor], widths: Widths, previous: StructuredMasks
) -> StructuredMasks:
    """Masks keeping exactly `widths` (per layer) of the best-scored groups.

    Args:
        scores: as raw_group_scores returns ("attention.<i>" per head or per row).
        widths: kept hidden dims, heads (unit "heads") or per-head width (unit
            "inner"), FFN neurons per layer.
        previous: the current masks; pruned groups never come back.
    """
    dev = previous.hidden.device
    hidden = keep_top(scores["hidden"].to(dev), widths.hidden, previous.hidden)
    ffn = [keep_top(scores[f"ffn.{i}"].to(dev), k, m)
           for i, (k, m) in enumerate(zip(widths.ffn, previous.ffn))]
    if previous.heads is not None:
        heads = [keep_top(scores[f"attention.{i}"].to(dev), k, m)
                 for i, (k, m) in enumerate(zip(widths.heads, previous.heads))]
        return StructuredMasks(hidden, ffn, previous.head_size, heads=heads)
    attention = []
    for i, (k, m) in enumerate(zip(widths.head_size, previous.attention)):
        # Every head keeps the same count, so the compact layer has equal-width heads.
        per_head = zip(scores[f"attention.{i}"].to(dev).view(-1, previous.head_size),
                       m.view(-1, previous.head_size))
        attention.append(torch.cat([keep_top(s, k, p) for s, p in per_head]))
    return StructuredMasks(hidden, ffn, previous.head_size, attention=attention)
