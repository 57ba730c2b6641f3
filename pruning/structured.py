"""Structured pruning of BERT in three pure steps: score, select, apply.

Groups (METHODS.md section 2):
  hidden: one index set [H] shared by the embeddings, every matrix that reads or
    writes the residual stream, every LayerNorm, the pooler and the classifier input;
    RoBERTa / XLM-R's classification head (pruning.layouts) is handled as BERT's pooler
    + classifier: its dense [H, H] on both sides, its out_proj on the input side;
  attention.i: per layer, the inner dimension [n_heads * head_size] (rows of W_q,
    W_k, W_v, columns of W_o), kept whole heads at a time (unit "heads") or with the
    same kept count in every head (unit "inner");
  ffn.i: per layer, the FFN neurons [I] (rows of W_in, columns of W_out).

One table (`group_layout`) says which dimension of which parameter each group
indexes; scoring, selection (here), masking and slicing (pruning.surgery) all read
it, so a masked model and its sliced twin cannot disagree. Target widths are chosen
here by parameter budget (pruning.compact.count_params_for) and reached along a
CubicSchedule.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import BertConfig

from pruning.masks import keep_mask, masks_checksum, sensitivity_scores
from pruning.accounting import count_params_for
from pruning.compact_config import ATTENTION_UNITS, AttentionUnit, Widths

# (parameter-name pattern, [(dim, group)]); "attention" and "ffn" get the layer index.
_LAYER = r"(?:^|\.)encoder\.layer\.(?P<layer>\d+)\."
_LAYOUT: tuple[tuple[re.Pattern[str], tuple[tuple[int, str], ...]], ...] = tuple(
    (re.compile(pattern + "$"), groups) for pattern, groups in (
        (r"(?:^|\.)embeddings\.(word|position|token_type)_embeddings\.weight", ((1, "hidden"),)),
        (r"(?:^|\.)LayerNorm\.(weight|bias)", ((0, "hidden"),)),
        (_LAYER + r"attention\.self\.(query|key|value)\.weight", ((0, "attention"), (1, "hidden"))),
        (_LAYER + r"attention\.self\.(query|key|value)\.bias", ((0, "attention"),)),
        (_LAYER + r"attention\.output\.dense\.weight", ((0, "hidden"), (1, "attention"))),
        (_LAYER + r"intermediate\.dense\.weight", ((0, "ffn"), (1, "hidden"))),
        (_LAYER + r"intermediate\.dense\.bias", ((0, "ffn"),)),
        (_LAYER + r"output\.dense\.weight", ((0, "hidden"), (1, "ffn"))),
        (_LAYER + r"(attention\.)?output\.dense\.bias", ((0, "hidden"),)),
        (r"(?:^|\.)pooler\.dense\.weight", ((0, "hidden"), (1, "hidden"))),
        (r"(?:^|\.)pooler\.dense\.bias", ((0, "hidden"),)),
        (r"^classifier\.weight", ((1, "hidden"),)),
        # RoBERTa's head: dense + tanh plays BERT's pooler, out_proj its classifier.
        (r"^classifier\.dense\.weight", ((0, "hidden"), (1, "hidden"))),
        (r"^classifier\.dense\.bias", ((0, "hidden"),)),
        (r"^classifier\.out_proj\.weight", ((1, "hidden"),)),
    ))


def group_layout(names: list[str]) -> dict[str, tuple[tuple[int, str], ...]]:
    """Parameter name -> ((dim, group), ...) for the names that belong to a group.

    Groups are "hidden", "attention.<i>" and "ffn.<i>"; `names` come from
    `model.named_parameters()` or `model.state_dict()` of an unwrapped BERT, RoBERTa
    or XLM-R encoder or sequence classifier (any prefix before `embeddings.` /
    `encoder.layer.<i>.`).
    """
    layout = {}
    for name in names:
        for pattern, groups in _LAYOUT:
            found = pattern.search(name)
            if found:
                layer = found.groupdict().get("layer")
                layout[name] = tuple((d, g if g == "hidden" else f"{g}.{layer}") for d, g in groups)
                break
    return layout


@dataclass
class StructuredMasks:
    """Bool masks (True = kept) of every group of a BERT.

    hidden [H]; ffn: per layer [I]; exactly one of heads (per layer [n_heads],
    unit "heads") or attention (per layer [n_heads * head_size], unit "inner");
    head_size is the original head width, to expand head masks into rows.
    """

    hidden: Tensor
    ffn: list[Tensor]
    head_size: int
    heads: list[Tensor] | None = None
    attention: list[Tensor] | None = None

    def __post_init__(self) -> None:
        if (self.heads is None) == (self.attention is None):
            raise ValueError("StructuredMasks needs exactly one of heads or attention")

    @property
    def attention_unit(self) -> AttentionUnit:
        return "heads" if self.heads is not None else "inner"

    @classmethod
    def full(cls, widths: Widths, attention_unit: AttentionUnit = "heads") -> StructuredMasks:
        """All-True masks for a model of `widths` (uniform head size per layer)."""
        if attention_unit not in ATTENTION_UNITS:
            raise ValueError(f"attention_unit must be one of {ATTENTION_UNITS}, got {attention_unit!r}")
        ones = lambda n: torch.ones(n, dtype=torch.bool)  # noqa: E731
        units = {"heads": [ones(h) for h in widths.heads]} if attention_unit == "heads" else {
            "attention": [ones(h * s) for h, s in zip(widths.heads, widths.head_size)]}
        return cls(ones(widths.hidden), [ones(f) for f in widths.ffn], widths.head_size[0], **units)

    def attention_rows(self) -> list[Tensor]:
        """Per layer bool [n_heads * head_size]: the kept rows of W_q, W_k, W_v."""
        if self.attention is not None:
            return list(self.attention)
        return [h.repeat_interleave(self.head_size) for h in self.heads]

    def group_vectors(self) -> dict[str, Tensor]:
        """Group name (as in group_layout) -> bool [group size]."""
        vectors = {"hidden": self.hidden}
        for i, (rows, ffn) in enumerate(zip(self.attention_rows(), self.ffn)):
            vectors[f"attention.{i}"], vectors[f"ffn.{i}"] = rows, ffn
        return vectors

    def widths(self) -> Widths:
        """The widths of the model these masks slice out."""
        rows = self.attention_rows()
        if self.heads is not None:
            heads = tuple(int(h.sum()) for h in self.heads)
            size = tuple(self.head_size for _ in self.heads)
        else:
            per_head = [r.view(-1, self.head_size).sum(1) for r in rows]
            heads = tuple(p.numel() for p in per_head)
            size = tuple(int(p[0]) if p.numel() else 0 for p in per_head)
        return Widths(int(self.hidden.sum()), heads, size, tuple(int(f.sum()) for f in self.ffn))

    def to_flat(self) -> dict[str, Tensor]:
        """Safetensors-compatible CPU dict: hidden, head_size, ffn.<i>, heads.<i> | attention.<i>."""
        flat = {"hidden": self.hidden, "head_size": torch.tensor(self.head_size, dtype=torch.int64)}
        unit = "heads" if self.heads is not None else "attention"
        for i, (att, ffn) in enumerate(zip(self.heads or self.attention, self.ffn)):
            flat[f"{unit}.{i}"], flat[f"ffn.{i}"] = att, ffn
        return {k: v.detach().cpu().contiguous() for k, v in flat.items()}

    @classmethod
    def from_flat(cls, flat: dict[str, Tensor]) -> StructuredMasks:
        """Inverse of to_flat."""
        layers = sum(1 for k in flat if k.startswith("ffn."))
        unit = "heads" if "heads.0" in flat else "attention"
        lists = {name: [flat[f"{name}.{i}"].bool() for i in range(layers)] for name in ("ffn", unit)}
        return cls(flat["hidden"].bool(), lists["ffn"], int(flat["head_size"]), **{unit: lists[unit]})

    def checksum(self) -> int:
        """pruning.masks.masks_checksum of the bool masks: equal on every DDP rank iff they are."""
        return masks_checksum({k: v for k, v in self.to_flat().items() if v.dtype == torch.bool})


# ---------------------------------------------------------------- score

def raw_group_scores(
    model: nn.Module, masks: StructuredMasks, *, abs_of_sum: bool = False
) -> dict[str, Tensor]:
    """Score each group from the current gradients (call after backward).

    Default: sum over the group's weights and biases of |w * dL/dw|; abs_of_sum:
    |sum w * dL/dw|. Frozen parameters (requires_grad False) contribute nothing.

    Returns:
        "hidden" [H], "attention.<i>" [n_heads] (unit "heads") or
        [n_heads * head_size] (unit "inner"), "ffn.<i>" [I]; float32.
    """
    params = dict(model.named_parameters())
    totals = {g: torch.zeros(v.numel(), device=v.device) for g, v in masks.group_vectors().items()}
    for name, groups in group_layout(list(params)).items():
        p = params[name]
        if not p.requires_grad:
            continue
        if p.grad is None:
            raise ValueError(f"no gradient for {name}: score groups after backward() and "
                             "before optimizer.zero_grad()")
        prod = (p.detach() * p.grad.detach() if abs_of_sum else sensitivity_scores(p, p.grad)).float()
        for dim, group in groups:
            other = [d for d in range(prod.ndim) if d != dim]
            per_index = prod.sum(dim=other) if other else prod  # [size of dim]
            totals[group] = totals[group] + per_index.to(totals[group].device)
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


# ---------------------------------------------------------------- select

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


# ---------------------------------------------------------------- widths

def _step(full: int, multiple: int) -> int:
    # Matmul kernels (CPU and GPU) run odd widths far slower than multiples of 8 or 16
    # (bench/speed.py); tiny models (at most 4 multiples wide) keep exact widths.
    return multiple if multiple > 1 and full > 4 * multiple else 1


def _scaled(full: Widths, r: float, shrink_hidden: bool, unit: AttentionUnit,
            multiple: int = 1) -> Widths:
    """Every prunable width at about fraction r of `full` (hidden at least 1), hidden and
    FFN widths rounded down to a multiple of `multiple` (see _step)."""
    down = lambda x, f: max(_step(f, multiple), x - x % _step(f, multiple))  # noqa: E731
    hidden = down(max(1, round(r * full.hidden)), full.hidden) if shrink_hidden else full.hidden
    heads = tuple(round(r * h) for h in full.heads) if unit == "heads" else full.heads
    size = full.head_size if unit == "heads" else tuple(round(r * s) for s in full.head_size)
    return Widths(hidden, heads, size, tuple(down(round(r * f), f) for f in full.ffn))


def target_widths(
    config: BertConfig, keep_fraction: float, *, shrink_hidden: bool = True,
    attention_unit: AttentionUnit = "heads", pooler: bool = True, num_labels: int = 0,
    multiple_of: int = 1,
) -> Widths:
    """Uniform widths whose whole-model parameter count is at most, and as close as
    possible to, keep_fraction of the full model's (count_params_for's convention).
    With `multiple_of` > 1, hidden and FFN widths of models over 4 multiples wide
    are multiples of it (faster kernels, a budget met slightly less closely).

    All widths shrink by one common ratio (the largest that fits the budget, found by
    bisection; counts grow with it), then leftover budget goes to FFN neurons, the
    finest group. Raises ValueError naming the budget and the floor (every prunable
    group pruned, hidden at 1 or at full width) when the budget is below the floor.
    """
    if attention_unit not in ATTENTION_UNITS:
        raise ValueError(f"attention_unit must be one of {ATTENTION_UNITS}, got {attention_unit!r}")
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    full = Widths.of_config(config)
    count = lambda w: count_params_for(config, w, pooler=pooler, num_labels=num_labels)  # noqa: E731
    budget = int(keep_fraction * count(full))
    at = lambda r: _scaled(full, r, shrink_hidden, attention_unit, multiple_of)  # noqa: E731
    if count(at(0.0)) > budget:
        hint = "" if shrink_hidden else "; allow shrink_hidden (the embeddings alone exceed it)"
        raise ValueError(f"keep_fraction {keep_fraction} gives a budget of {budget} parameters, "
                         f"below the floor of {count(at(0.0))} with every prunable group pruned{hint}")
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if count(at(mid)) <= budget else (lo, mid)
    best = at(1.0) if count(at(1.0)) <= budget else at(lo)
    per_neuron = len(best.ffn) * (2 * best.hidden + 1)  # one FFN neuron in every layer
    extra = min(min(f - b for f, b in zip(full.ffn, best.ffn)), (budget - count(best)) // per_neuron)
    extra -= extra % _step(full.ffn[0], multiple_of)
    return Widths(best.hidden, best.heads, best.head_size, tuple(f + extra for f in best.ffn))


def widths_from(config: BertConfig, spec: Mapping[str, int | Sequence[int]], *,
                attention_unit: AttentionUnit = "heads") -> Widths:
    """Explicit widths: {"hidden": int, "heads" | "head_size" | "ffn": int or one per layer}.

    Missing keys keep the full width; "heads" only with unit "heads", "head_size"
    only with unit "inner" (the other stays full). Raises ValueError when a width
    exceeds the full model's or is negative (hidden must stay >= 1).
    """
    full = Widths.of_config(config)
    free = "heads" if attention_unit == "heads" else "head_size"  # the other stays full
    unknown = set(spec) - {"hidden", free, "ffn"}
    if unknown:
        raise ValueError(f"widths keys {sorted(unknown)} not allowed with attention_unit "
                         f"{attention_unit!r}; use hidden, {free}, ffn")
    n = len(full.ffn)
    per_layer = {k: (tuple(v) if isinstance(v, Sequence) else (int(v),) * n)
                 for k, v in spec.items() if k != "hidden"}
    widths = Widths(int(spec.get("hidden", full.hidden)), per_layer.get("heads", full.heads),
                    per_layer.get("head_size", full.head_size), per_layer.get("ffn", full.ffn))
    for key in ("heads", "head_size", "ffn"):
        got, top = getattr(widths, key), getattr(full, key)
        if len(got) != n or any(not 0 <= g <= t for g, t in zip(got, top)):
            raise ValueError(f"widths[{key!r}] = {list(got)} must give {n} sizes within {list(top)}")
    if not 1 <= widths.hidden <= full.hidden:
        raise ValueError(f"widths['hidden'] = {widths.hidden} must be in [1, {full.hidden}]")
    return widths


def scheduled_widths(full: Widths, target: Widths, progress: float) -> Widths:
    """Widths a fraction `progress` in [0, 1] of the way from `full` to `target`.

    With progress = CubicSchedule.sparsity_at(t) / final_sparsity every group type
    follows the cubic schedule from its full width to its target.
    """
    step = lambda f, t: f - round(progress * (f - t))  # noqa: E731
    per_layer = lambda a, b: tuple(step(f, t) for f, t in zip(a, b))  # noqa: E731
    return Widths(step(full.hidden, target.hidden), per_layer(full.heads, target.heads),
                  per_layer(full.head_size, target.head_size), per_layer(full.ffn, target.ffn))
