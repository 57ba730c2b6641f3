from __future__ import annotations

import pytest
from torch import nn

from pruning.targets import encoder_linear_weights

SUFFIXES = (
    "attention.self.query.weight",
    "attention.self.key.weight",
    "attention.self.value.weight",
    "attention.output.dense.weight",
    "intermediate.dense.weight",
    "output.dense.weight",
)


def _expected(prefix: str, layers: int) -> list[str]:
    return [f"{prefix}.encoder.layer.{i}.{s}" for i in range(layers) for s in SUFFIXES]


def test_bert_six_matrices_per_layer_in_model_order(tiny_bert):
    model = tiny_bert()
    weights = encoder_linear_weights(model)
    assert list(weights) == _expected("bert", 2)
    named = dict(model.named_parameters())
    for name, w in weights.items():
        assert named[name] is w  # the live parameter, so masks act on the model


def test_bert_excludes_pooler_classifier_embeddings_biases_layernorms(tiny_bert):
    names = list(encoder_linear_weights(tiny_bert()))
    for banned in ("pooler", "classifier", "embeddings", "LayerNorm", ".bias"):
        assert not any(banned in n for n in names)


def test_bare_bert_model_and_ddp_style_prefix(tiny_bert):
    bare = tiny_bert().bert
    unprefixed = [n.removeprefix("bert.") for n in _expected("bert", 2)]
    assert list(encoder_linear_weights(bare)) == unprefixed
    wrapped = nn.Module()
    wrapped.module = tiny_bert()  # how DistributedDataParallel names its child
    assert list(encoder_linear_weights(wrapped)) == ["module." + n for n in _expected("bert", 2)]


def test_xlm_roberta_layout(tiny_roberta):
    model = tiny_roberta("xlm-roberta")
    assert list(encoder_linear_weights(model)) == _expected("roberta", 2)


def test_no_encoder_raises_naming_the_class():
    with pytest.raises(ValueError, match="Sequential"):
        encoder_linear_weights(nn.Sequential(nn.Linear(3, 3)))
