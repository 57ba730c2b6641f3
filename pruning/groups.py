"""The parameter groups of structured pruning, and their masks.

Groups (METHODS.md section 2):
  hidden: one index set [H] shared by the embeddings, every matrix that reads or
    writes the residual stream, every LayerNorm, the pooler and the classifier input;
    RoBERTa / XLM-R's classification head (pruning.layouts) is handled as BERT's pooler
    + classifier: its dense [H, H] on both sides, its out_proj on the input side;
  attention.i: per layer, the inner dimension [n_heads * head_size] (rows of W_q,
    W_k, W_v, columns of W_o), kept whole heads at a time (unit "heads") or with the
    same kept count in every head (unit "inner");
  ffn.i: per layer, the FFN neurons [I] (rows of W_in, columns of W_out).
A masked-LM head (BertForMaskedLM's `cls`, RoBERTa's `lm_head`) belongs to hidden too.

One table (`group_layout`) says which dimension of which parameter each group
indexes; scoring (pruning.group_scores), selection (pruning.structured), masking and
slicing (pruning.surgery) all read it, so a masked model and its sliced twin cannot
disagree. `StructuredMasks` holds one bool mask per group.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import Tensor

from pruning.compact_config import ATTENTION_UNITS, AttentionUnit, Widths
from pruning.masks import masks_checksum

# (parameter-name pattern, [(dim, group)]); "attention" and "ffn" get the layer index.
_LAYER = r"(?:^|\.)encoder\.layer\.(?P<layer>\d+)\."
_HIDDEN_ROWS = ((0, "hidden"),)  # dim 0 is the residual width: biases and LayerNorms writing to it
_HIDDEN_COLUMNS = ((1, "hidden"),)  # dim 1 is: embeddings, classifier and decoder inputs


def _hidden_square(prefix: str) -> tuple[tuple[str, tuple[tuple[int, str], ...]], ...]:
    """A dense [H, H] layer of a head (pooler, RoBERTa's classifier.dense, a masked-LM transform)."""
    return (prefix + r"\.weight", ((0, "hidden"), (1, "hidden"))), (prefix + r"\.bias", _HIDDEN_ROWS)


_LAYOUT: tuple[tuple[re.Pattern[str], tuple[tuple[int, str], ...]], ...] = tuple(
    (re.compile(pattern + "$"), groups) for pattern, groups in (
        (r"(?:^|\.)embeddings\.(word|position|token_type)_embeddings\.weight", _HIDDEN_COLUMNS),
        (r"(?:^|\.)LayerNorm\.(weight|bias)", _HIDDEN_ROWS),
        (_LAYER + r"attention\.self\.(query|key|value)\.weight", ((0, "attention"), (1, "hidden"))),
        (_LAYER + r"attention\.self\.(query|key|value)\.bias", ((0, "attention"),)),
        (_LAYER + r"attention\.output\.dense\.weight", ((0, "hidden"), (1, "attention"))),
        (_LAYER + r"intermediate\.dense\.weight", ((0, "ffn"), (1, "hidden"))),
        (_LAYER + r"intermediate\.dense\.bias", ((0, "ffn"),)),
        (_LAYER + r"output\.dense\.weight", ((0, "hidden"), (1, "ffn"))),
        (_LAYER + r"(attention\.)?output\.dense\.bias", _HIDDEN_ROWS),
        *_hidden_square(r"(?:^|\.)pooler\.dense"),
        (r"^classifier\.weight", _HIDDEN_COLUMNS),
        # RoBERTa's head: dense + tanh plays BERT's pooler, out_proj its classifier.
        *_hidden_square(r"^classifier\.dense"),
        (r"^classifier\.out_proj\.weight", _HIDDEN_COLUMNS),
        # Masked-LM heads (HomoDistil's prediction loss): BERT's transform + tied decoder;
        # RoBERTa's dense + layer_norm + tied decoder. Their bias [vocab] is not grouped.
        *_hidden_square(r"(?:^|\.)cls\.predictions\.transform\.dense"),
        (r"(?:^|\.)cls\.predictions\.decoder\.weight", _HIDDEN_COLUMNS),
        *_hidden_square(r"(?:^|\.)lm_head\.dense"),
        (r"(?:^|\.)lm_head\.layer_norm\.(weight|bias)", _HIDDEN_ROWS),
        (r"(?:^|\.)lm_head\.decoder\.weight", _HIDDEN_COLUMNS),
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

    def group_vectors(self, within: StructuredMasks | None = None) -> dict[str, Tensor]:
        """Group name (as in group_layout) -> bool [group size].

        `within`: the groups a model still holds after it was sliced to them
        (pruning.surgery.reslice); the vectors are then these masks at those indices only,
        bool [count `within` keeps]. Raises ValueError when the masks keep an index
        `within` does not (sliced groups never come back).
        """
        vectors = {"hidden": self.hidden}
        for i, (rows, ffn) in enumerate(zip(self.attention_rows(), self.ffn)):
            vectors[f"attention.{i}"], vectors[f"ffn.{i}"] = rows, ffn
        if within is None:
            return vectors
        there = within.group_vectors()
        if any(bool((vectors[g] & ~v.to(vectors[g].device)).any()) for g, v in there.items()):
            raise ValueError("the masks keep groups that were already sliced out of the model")
        return {g: vectors[g][v.to(vectors[g].device)] for g, v in there.items()}

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
