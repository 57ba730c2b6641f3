"""Compact BERT: a dense BERT whose layers each have their own widths.

Structured pruning (pruning.structured, pruning.surgery) slices heads, attention
inner dimensions, FFN neurons and hidden dimensions out of a BERT, so layer i of
the result has `layer_num_heads[i]` heads of `layer_head_size[i]` and
`layer_intermediate_size[i]` FFN neurons, all on a (possibly smaller) global
`hidden_size`. The modules are transformers' own BERT modules with resized
nn.Linear layers, so parameter names match BertModel's and weights load as usual.

RoBERTa and XLM-R encoders have the same layers; config `layout` "roberta" gives
the compact model their embeddings (position ids from the input ids) and their
classification head, so a model sliced from one computes what it computed.

Loading a saved compact model needs its classes registered with the Auto classes
first, which importing this module does:

    import pruning.compact  # noqa: F401  (registers "compact-bert")
    model = AutoModelForSequenceClassification.from_pretrained(path)

Registration is the one thing this module does at import (idempotent): without it
`from_pretrained` cannot map the saved model_type "compact-bert" to a class.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    BertModel,
)
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.bert.modeling_bert import (
    BertEmbeddings,
    BertEncoder,
    BertLayer,
    BertPooler,
    BertPreTrainedModel,
    BertSelfAttention,
)
from transformers.models.roberta.modeling_roberta import RobertaClassificationHead
from transformers.utils import can_return_tuple

from pruning.layouts import LAYOUTS, CompactRobertaEmbeddings, layout_of


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


def count_params_for(config: BertConfig, widths: Widths, *, pooler: bool = True,
                     num_labels: int = 0) -> int:
    """What pruning.accounting.count_params gives for a model of `widths`, without building it.

    Counts embeddings (word, position, token type, LayerNorm), every layer, the pooler
    when `pooler`, and a classifier of `num_labels` outputs (0: none, as BertModel).
    """
    h = widths.hidden
    total = (config.vocab_size + config.max_position_embeddings + config.type_vocab_size) * h + 2 * h
    for a, f in zip(widths.attention(), widths.ffn):
        # W_q, W_k, W_v with biases; W_o and its bias; FFN in and out; two LayerNorms.
        total += 3 * (a * h + a) + (a * h + h) + (2 * f * h + f + h) + 4 * h
    if pooler:
        total += h * h + h
    return total + num_labels * (h + 1)


def encoder_macs(widths: Widths, seq_len: int) -> int:
    """Multiply-accumulates of the encoder layers for one sequence of `seq_len` tokens.

    Per layer: the Q, K, V and output projections (4 a h per token), the FFN (2 h f per
    token) and the two attention products (2 T a per token); embeddings, LayerNorms
    and softmax are left out as negligible.
    """
    per_token = sum(4 * a * widths.hidden + 2 * widths.hidden * f + 2 * seq_len * a
                    for a, f in zip(widths.attention(), widths.ffn))
    return seq_len * per_token


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


class CompactBertSelfAttention(BertSelfAttention):
    """BertSelfAttention with per-layer head count and head size (both may be 0)."""

    def __init__(self, config: CompactBertConfig, layer_idx: int) -> None:
        nn.Module.__init__(self)  # BertSelfAttention.__init__ insists on hidden % heads == 0
        self.config = config
        self.num_attention_heads = config.layer_num_heads[layer_idx]
        self.attention_head_size = config.layer_head_size[layer_idx]
        self.all_head_size = self.num_attention_heads * self.attention_head_size
        scale_dim = config.scaling_head_size or self.attention_head_size
        self.scaling = scale_dim ** -0.5 if scale_dim > 0 else 1.0
        self.query = nn.Linear(config.hidden_size, self.all_head_size)
        self.key = nn.Linear(config.hidden_size, self.all_head_size)
        self.value = nn.Linear(config.hidden_size, self.all_head_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)
        self.is_decoder = config.is_decoder
        self.is_causal = False
        self.layer_idx = layer_idx

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None,
                past_key_values=None, **kwargs) -> tuple[Tensor, Tensor]:
        """hidden_states [B, T, H] -> context [B, T, heads * head_size], probs [B, heads, T, T]."""
        if self.all_head_size == 0:
            # view(..., -1, 0) cannot infer a size, so an empty layer answers directly.
            b, t = hidden_states.shape[:2]
            return hidden_states.new_zeros(b, t, 0), hidden_states.new_zeros(b, 0, t, t)
        return super().forward(hidden_states, attention_mask, past_key_values, **kwargs)


def _compact_layer(config: CompactBertConfig, i: int) -> BertLayer:
    """BertLayer i with its own attention and FFN widths."""
    layer_config = copy.copy(config)
    # One head always divides hidden_size; the self-attention is replaced right after.
    layer_config.num_attention_heads = 1
    layer_config.intermediate_size = config.layer_intermediate_size[i]
    layer = BertLayer(layer_config, layer_idx=i)
    layer.attention.self = CompactBertSelfAttention(config, i)
    layer.attention.output.dense = nn.Linear(layer.attention.self.all_head_size,
                                             config.hidden_size)
    return layer


class CompactBertModel(BertModel):
    """BertModel whose layer i has the widths of `config.layer_*[i]`."""

    config_class = CompactBertConfig

    def __init__(self, config: CompactBertConfig, add_pooling_layer: bool = True) -> None:
        with warnings.catch_warnings():
            # A layer with 0 heads or 0 FFN neurons has empty weights; nothing to initialise.
            warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
            self._build(config, add_pooling_layer)

    def _build(self, config: CompactBertConfig, add_pooling_layer: bool) -> None:
        BertPreTrainedModel.__init__(self, config)
        self.config = config
        self.gradient_checkpointing = False
        roberta = config.layout == "roberta"
        self.embeddings = CompactRobertaEmbeddings(config) if roberta else BertEmbeddings(config)
        self.encoder = BertEncoder.__new__(BertEncoder)
        nn.Module.__init__(self.encoder)
        self.encoder.config = config
        self.encoder.layer = nn.ModuleList(
            [_compact_layer(config, i) for i in range(config.num_hidden_layers)])
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.post_init()


class CompactBertForSequenceClassification(BertForSequenceClassification):
    """BertForSequenceClassification on a CompactBertModel.

    With layout "roberta", RobertaForSequenceClassification's head instead: no pooler;
    `classifier` is a RobertaClassificationHead (first token's last hidden state ->
    dense [H, H] -> tanh -> out_proj [num_labels, H]). The encoder is `self.bert` in
    both layouts: one class has one base_model_prefix, which lets AutoModel load the
    encoder of either from a saved classifier (slice_model renames "roberta." keys).
    """

    config_class = CompactBertConfig

    def __init__(self, config: CompactBertConfig) -> None:
        BertPreTrainedModel.__init__(self, config)
        self.num_labels = config.num_labels
        self.config = config
        roberta = config.layout == "roberta"
        self.bert = CompactBertModel(config, add_pooling_layer=not roberta)
        if roberta:
            self.classifier = RobertaClassificationHead(config)
        else:
            dropout = config.classifier_dropout
            self.dropout = nn.Dropout(config.hidden_dropout_prob if dropout is None else dropout)
            self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, position_ids: Tensor | None = None,
                inputs_embeds: Tensor | None = None, labels: Tensor | None = None, **kwargs):
        """ids [B, T] -> SequenceClassifierOutput: logits [B, num_labels], loss given labels [B]."""
        head = super().forward if self.config.layout == "bert" else self._roberta_forward
        return head(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, labels,
                    **kwargs)

    @can_return_tuple
    def _roberta_forward(self, input_ids, attention_mask, token_type_ids, position_ids,
                         inputs_embeds, labels, **kwargs) -> SequenceClassifierOutput:
        # RobertaForSequenceClassification.forward on self.bert; its loss is the same
        # transformers function BERT's head uses (regression for num_labels 1).
        outputs = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                            position_ids=position_ids, inputs_embeds=inputs_embeds, return_dict=True,
                            **kwargs)
        logits = self.classifier(outputs.last_hidden_state)
        loss = None if labels is None else self.loss_function(labels, logits, self.config)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                        attentions=outputs.attentions)


def register_compact_bert() -> None:
    """Map model_type "compact-bert" to these classes in the Auto registries (idempotent)."""
    AutoConfig.register(CompactBertConfig.model_type, CompactBertConfig, exist_ok=True)
    AutoModel.register(CompactBertConfig, CompactBertModel, exist_ok=True)
    AutoModelForSequenceClassification.register(
        CompactBertConfig, CompactBertForSequenceClassification, exist_ok=True)


register_compact_bert()

__all__ = [
    "ATTENTION_UNITS",
    "AttentionUnit",
    "Widths",
    "count_params_for",
    "encoder_macs",
    "CompactBertConfig",
    "CompactBertForSequenceClassification",
    "CompactBertModel",
    "CompactBertSelfAttention",
    "register_compact_bert",
]
