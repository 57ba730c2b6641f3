"""How wide a structurally pruned BERT gets: its target widths and the widths on the way.

A target comes from a parameter budget (`target_widths`, counted by
pruning.accounting.count_params_for) or from an explicit spec (`widths_from`); the
widths in between follow the cubic schedule (`scheduled_widths`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from transformers import BertConfig

from pruning.accounting import count_params_for
from pruning.compact_config import ATTENTION_UNITS, AttentionUnit, Widths


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
