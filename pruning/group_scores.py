"""Group scores for structured pruning: first-order sensitivity per group, smoothed.

The score step of pruning.structured: `raw_group_scores` reads one step's gradients
(METHODS.md "scores": |w * dL/dw| summed over a group's weights), `GroupScores` keeps
their moving averages (EMA, optionally PLATON's uncertainty) across steps.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pruning.groups import StructuredMasks, group_layout
from pruning.masks import sensitivity_scores


def raw_group_scores(
    model: nn.Module, masks: StructuredMasks, *, abs_of_sum: bool = False,
    present: StructuredMasks | None = None,
) -> dict[str, Tensor]:
    """Score each group from the current gradients (call after backward).

    Default: sum over the group's weights and biases of |w * dL/dw|; abs_of_sum:
    |sum w * dL/dw|. Frozen parameters (requires_grad False) contribute nothing.
    `present`: the groups `model` still holds after it was cut to them
    (pruning.surgery.reslice); the others score 0, as pruned groups of a masked model do.

    Returns:
        "hidden" [H], "attention.<i>" [n_heads] (unit "heads") or
        [n_heads * head_size] (unit "inner"), "ffn.<i>" [I]; float32, at the masks'
        full widths.
    """
    params = dict(model.named_parameters())
    held = masks.group_vectors(present)
    totals = {g: torch.zeros(v.numel(), device=v.device) for g, v in held.items()}
    for name, groups in group_layout(list(params)).items():
        p = params[name]
        if not p.requires_grad or p.numel() == 0:  # a layer cut to no heads computes nothing
            continue
        if p.grad is None:
            raise ValueError(f"no gradient for {name}: score groups after backward() and "
                             "before optimizer.zero_grad()")
        prod = (p.detach() * p.grad.detach() if abs_of_sum else sensitivity_scores(p, p.grad)).float()
        for dim, group in groups:
            other = [d for d in range(prod.ndim) if d != dim]
            per_index = prod.sum(dim=other) if other else prod  # [size of dim]
            totals[group] = totals[group] + per_index.to(totals[group].device)
    if present is not None:  # back to the full widths: the cut groups score 0
        there = present.group_vectors()
        totals = {g: t.new_zeros(there[g].numel()).masked_scatter(there[g].to(t.device), t)
                  for g, t in totals.items()}
    if masks.heads is not None:
        for i in range(len(masks.heads)):
            totals[f"attention.{i}"] = totals[f"attention.{i}"].view(-1, masks.head_size).sum(-1)
    return {g: t.abs() for g, t in totals.items()} if abs_of_sum else totals


class GroupScores:
    """Moving averages of group scores; tensors only, so they checkpoint as they are.

    EMA: I_bar <- beta * I_bar + (1 - beta) * I. With `uncertainty` (PLATON, Zhang et
    al. 2022): also U_bar <- beta2 * U_bar + (1 - beta2) * |I - I_bar| (the updated
    I_bar, as PLATON's code), and the score is I_bar * U_bar. Both start at 0.
    """

    def __init__(self, beta: float = 0.85, *, uncertainty: bool = False, beta2: float = 0.95) -> None:
        for name, value in (("beta", beta), ("beta2", beta2)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        self.beta, self.beta2, self.uncertainty = beta, beta2, uncertainty
        self.importance: dict[str, Tensor] = {}
        self.spread: dict[str, Tensor] = {}

    def update(self, raw: dict[str, Tensor]) -> None:
        """Fold one step's raw scores (group -> [n]) into the averages."""
        for group, value in raw.items():
            value = value.detach().float()
            avg = self.importance.get(group, torch.zeros_like(value)).to(value.device)
            avg = self.beta * avg + (1 - self.beta) * value
            self.importance[group] = avg
            if self.uncertainty:
                spread = self.spread.get(group, torch.zeros_like(value)).to(value.device)
                self.spread[group] = self.beta2 * spread + (1 - self.beta2) * (value - avg).abs()

    def scores(self) -> dict[str, Tensor]:
        """Group -> [n] selection scores (higher is kept first)."""
        if not self.uncertainty:
            return dict(self.importance)
        return {g: avg * self.spread[g] for g, avg in self.importance.items()}

    def state_dict(self) -> dict[str, Tensor]:
        """{"importance.<group>": [n], "uncertainty.<group>": [n]} on CPU."""
        state = {f"importance.{g}": v.cpu() for g, v in self.importance.items()}
        return state | {f"uncertainty.{g}": v.cpu() for g, v in self.spread.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore what state_dict returned."""
        part = lambda prefix: {k[len(prefix):]: v.float() for k, v in state.items()  # noqa: E731
                               if k.startswith(prefix)}
        self.importance, self.spread = part("importance."), part("uncertainty.")
