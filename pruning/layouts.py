"""Encoder layouts: what differs between BERT and RoBERTa / XLM-R encoders.

Both have the same encoder layers (`encoder.layer.<i>.`, the same parameter names),
so grouping, masking and slicing (pruning.groups, pruning.surgery) treat them
alike. They differ in three places, handled here and where named:
  - prefix: the classifier holds its encoder as `bert` or `roberta`;
  - embeddings: RoBERTa counts position ids from pad_token_id + 1 over the non-pad
    tokens (pad tokens get pad_token_id) and has one token type; BERT's are 0..T-1;
  - classification head: BERT's pooler (dense [H, H] + tanh on the first token)
    feeds a linear `classifier`; RoBERTa has no pooler and its `classifier` holds
    its own dense [H, H] + tanh on the first token, then `out_proj` [num_labels, H].
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn
from transformers import PretrainedConfig
from transformers.models.bert.modeling_bert import BertEmbeddings
from transformers.models.roberta.modeling_roberta import RobertaEmbeddings

Layout = Literal["bert", "roberta"]
LAYOUTS: tuple[Layout, ...] = ("bert", "roberta")
# transformers model types with RoBERTa's embeddings and head (XLM-R's modules are
# copies of RoBERTa's).
ROBERTA_MODEL_TYPES = ("roberta", "xlm-roberta")
COMPACT_PREFIX = "bert"  # a compact classifier's encoder attribute, in either layout


def layout_of(config: PretrainedConfig) -> Layout:
    """"roberta" for RoBERTa / XLM-R configs and compact ones sliced from them, "bert" for
    BERT's. Other model types raise ValueError: sliced with a guessed layout, a model
    could load and silently compute something else (say, other position ids)."""
    if config.model_type == "compact-bert":
        return config.layout
    if config.model_type in ROBERTA_MODEL_TYPES:
        return "roberta"
    if config.model_type == "bert":
        return "bert"
    raise ValueError(f"model type {config.model_type!r} has no known encoder layout; structured "
                     f"pruning supports bert, {', '.join(ROBERTA_MODEL_TYPES)} (and compact-bert)")


def to_compact_prefix(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Rename a classifier's "<prefix>." keys (e.g. "roberta.") to the compact "bert."."""
    old = f"{prefix}."
    return {(f"{COMPACT_PREFIX}.{k[len(old):]}" if prefix and k.startswith(old) else k): v
            for k, v in state.items()}


class CompactRobertaEmbeddings(BertEmbeddings):
    """RoBERTa's embeddings as a BertEmbeddings (the same parameter names).

    The forward is transformers' RobertaEmbeddings.forward, so position ids are
    RoBERTa's. Subclassing BertEmbeddings lets BertPreTrainedModel's init fill the
    position_ids / token_type_ids buffers when from_pretrained builds the model on
    the meta device (its init knows BertEmbeddings only).
    """

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size,
                                                padding_idx=self.padding_idx)

    forward = RobertaEmbeddings.forward
    create_position_ids_from_input_ids = staticmethod(
        RobertaEmbeddings.create_position_ids_from_input_ids)
    create_position_ids_from_inputs_embeds = staticmethod(
        RobertaEmbeddings.create_position_ids_from_inputs_embeds)
