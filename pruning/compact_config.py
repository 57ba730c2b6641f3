"""The shape of a compact BERT: its widths, and the config that carries them.

`Widths` is what structured pruning chooses (pruning.sizing) and reads off masks
(pruning.groups); `CompactBertConfig` stores the same sizes per layer in a saved
model's config.json (`model_type: compact-bert`). The modules that build a model of
that shape, and their registration with the Auto classes, are in pruning.compact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from transformers import BertConfig

from pruning.layouts import LAYOUTS, layout_of


AttentionUnit = Literal["heads", "inner"]
ATTENTION_UNITS: tuple[AttentionUnit, ...] = ("heads", "inner")


@dataclass(frozen=True)
class Widths:
    """The sizes of a (compact) BERT: global hidden width, then one entry per layer."""

    hidden: int
    heads: tuple[int, ...]
    head_size: tuple[int, ...]
    ffn: tuple[int, ...]

    @classmethod
    def of_config(cls, config: BertConfig) -> Widths:
        """The widths a BertConfig or CompactBertConfig describes."""
        if isinstance(config, CompactBertConfig):
            return cls(config.hidden_size, tuple(config.layer_num_heads),
                       tuple(config.layer_head_size), tuple(config.layer_intermediate_size))
        n, heads = config.num_hidden_layers, config.num_attention_heads
        return cls(config.hidden_size, (heads,) * n, (config.hidden_size // heads,) * n,
                   (config.intermediate_size,) * n)

    def attention(self) -> tuple[int, ...]:
        """Per layer inner attention width: heads * head_size."""
        return tuple(h * s for h, s in zip(self.heads, self.head_size))

    def to_config(self, config: BertConfig, *, scaling_head_size: int | None) -> CompactBertConfig:
        """A CompactBertConfig of these widths, every other field from `config`."""
        fields = config.to_dict()
        for key in ("model_type", "architectures", "transformers_version", "layer_num_heads",
                    "layer_head_size", "layer_intermediate_size", "scaling_head_size", "layout"):
            fields.pop(key, None)
        return CompactBertConfig(**fields | {
            "hidden_size": self.hidden, "layer_num_heads": list(self.heads),
            "layer_head_size": list(self.head_size), "layer_intermediate_size": list(self.ffn),
            "scaling_head_size": scaling_head_size, "layout": layout_of(config)})


class CompactBertConfig(BertConfig):
    """BertConfig with per-layer widths; lists default to the uniform BERT widths.

    Fields beyond BertConfig (one entry per layer):
      layer_num_heads: heads in layer i (0 allowed: the attention adds only its bias).
      layer_head_size: width of each head in layer i (same for every head of a layer).
      layer_intermediate_size: FFN neurons in layer i (0 allowed).
      scaling_head_size: the head size whose 1/sqrt sets the attention scaling; a model
        sliced from BERT keeps the original head's (pruning inner dimensions must not
        change the softmax temperature). None: each layer's own head size.
      layout: "bert" (the default, so compact models saved before it existed load as
        they were): BERT's embeddings (position ids 0..T-1), pooler and linear
        classifier. "roberta" (sliced from RoBERTa / XLM-R): RoBERTa's embeddings
        (position ids count the non-pad tokens from pad_token_id + 1; pad tokens get
        pad_token_id) and classification head (CompactBertForSequenceClassification).
    """

    model_type = "compact-bert"

    layer_num_heads: list[int] | None = None
    layer_head_size: list[int] | None = None
    layer_intermediate_size: list[int] | None = None
    scaling_head_size: int | None = None
    layout: str = "bert"

    def __post_init__(self, **kwargs) -> None:
        super().__post_init__(**kwargs)
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        n = self.num_hidden_layers
        if self.layer_num_heads is None:
            self.layer_num_heads = [self.num_attention_heads] * n
        if self.layer_head_size is None:
            self.layer_head_size = [self.hidden_size // max(self.num_attention_heads, 1)] * n
        if self.layer_intermediate_size is None:
            self.layer_intermediate_size = [self.intermediate_size] * n
        for name in ("layer_num_heads", "layer_head_size", "layer_intermediate_size"):
            values = [int(v) for v in getattr(self, name)]
            if len(values) != n or min(values, default=0) < 0:
                raise ValueError(
                    f"{name} must hold {n} non-negative sizes (num_hidden_layers), got {values}")
            setattr(self, name, values)
