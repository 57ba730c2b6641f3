"""Compact BERT: a dense BERT whose layers each have their own widths.

Structured pruning (pruning.structured, pruning.surgery) slices heads, attention
inner dimensions, FFN neurons and hidden dimensions out of a BERT, so layer i of
the result has `layer_num_heads[i]` heads of `layer_head_size[i]` and
`layer_intermediate_size[i]` FFN neurons, all on a (possibly smaller) global
`hidden_size`. The modules are transformers' own BERT modules with resized
nn.Linear layers, so parameter names match BertModel's and weights load as usual.
The sizes (Widths) and the config that stores them (CompactBertConfig) are in
pruning.compact_config; this module builds the model they describe.

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

from torch import Tensor, nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
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

# The counts and the config moved to modules of their own; importing them from here
# keeps working (they are part of this module's public names, __all__).
from pruning.accounting import count_params_for, encoder_macs
from pruning.compact_config import ATTENTION_UNITS, AttentionUnit, CompactBertConfig, Widths
from pruning.layouts import CompactRobertaEmbeddings


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
