from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification
from transformers.models.roberta.modeling_roberta import RobertaClassificationHead

from pruning.compact import (
    CompactBertConfig,
    CompactBertForSequenceClassification,
    CompactBertModel,
    register_compact_bert,
)
from pruning.layouts import CompactRobertaEmbeddings
from tests.tiny import SIZES, VOCAB


def _config(**overrides: object) -> CompactBertConfig:
    sizes = dict(vocab_size=VOCAB, hidden_size=30, num_hidden_layers=3, num_attention_heads=2,
                 intermediate_size=64, layer_num_heads=[2, 0, 3], layer_head_size=[16, 16, 7],
                 layer_intermediate_size=[64, 5, 0], scaling_head_size=16, num_labels=3)
    return CompactBertConfig(**{**sizes, **overrides})


def _inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (2, 6), generator=g)
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 4:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_layers_take_their_own_widths():
    model = CompactBertModel(_config())
    shapes = [(l.attention.self.query.weight.shape, l.attention.output.dense.weight.shape,
               l.intermediate.dense.weight.shape, l.output.dense.weight.shape)
              for l in model.encoder.layer]
    assert shapes == [
        ((32, 30), (30, 32), (64, 30), (30, 64)),
        ((0, 30), (30, 0), (5, 30), (30, 5)),
        ((21, 30), (30, 21), (0, 30), (30, 0)),
    ]
    attention = model.encoder.layer[2].attention.self
    assert (attention.num_attention_heads, attention.attention_head_size) == (3, 7)
    assert attention.scaling == pytest.approx(16 ** -0.5)  # the original head's temperature


def test_defaults_are_uniform_bert_widths():
    config = CompactBertConfig(**SIZES)  # the tiny BERT's sizes
    assert config.layer_num_heads == [2, 2]
    assert config.layer_head_size == [16, 16]
    assert config.layer_intermediate_size == [64, 64]


def test_bad_layer_lists_are_refused():
    with pytest.raises(ValueError, match="layer_num_heads"):
        _config(layer_num_heads=[2, 2])


def test_empty_attention_and_ffn_add_only_their_bias():
    torch.manual_seed(0)
    model = CompactBertModel(_config()).eval()
    x = torch.randn(2, 6, 30)
    empty_attention = model.encoder.layer[1].attention
    expected = empty_attention.output.LayerNorm(x + empty_attention.output.dense.bias)
    torch.testing.assert_close(empty_attention(x)[0], expected)
    empty_ffn = model.encoder.layer[2]
    expected = empty_ffn.output.LayerNorm(x + empty_ffn.output.dense.bias)
    torch.testing.assert_close(empty_ffn.feed_forward_chunk(x), expected)


def test_forward_runs_with_eager_attention_probabilities():
    config = _config()
    config._attn_implementation = "eager"
    model = CompactBertForSequenceClassification(config).eval()
    out = model(**_inputs(), output_attentions=True, output_hidden_states=True)
    assert out.logits.shape == (2, 3) and torch.isfinite(out.logits).all()
    assert [tuple(a.shape) for a in out.attentions] == [(2, 2, 6, 6), (2, 0, 6, 6), (2, 3, 6, 6)]
    assert len(out.hidden_states) == 4


def test_save_and_auto_load_round_trip(tmp_path):
    register_compact_bert()  # a second registration must not raise
    model = CompactBertForSequenceClassification(_config()).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert AutoConfig.from_pretrained(tmp_path).model_type == "compact-bert"
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, CompactBertForSequenceClassification)
    assert loaded.config.layer_head_size == [16, 16, 7]
    with torch.no_grad():
        torch.testing.assert_close(loaded(**_inputs()).logits, model(**_inputs()).logits)
    assert isinstance(AutoModel.from_pretrained(tmp_path), CompactBertModel)


def test_configs_saved_before_layouts_load_as_bert(tmp_path):
    model = CompactBertForSequenceClassification(_config()).eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config.pop("layout") == "bert"
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.layout == "bert" and loaded.bert.pooler is not None
    with torch.no_grad():
        torch.testing.assert_close(loaded(**_inputs()).logits, model(**_inputs()).logits)


def test_unknown_layout_is_refused():
    with pytest.raises(ValueError, match="layout"):
        _config(layout="gpt")


def _roberta_inputs() -> dict[str, torch.Tensor]:
    inputs = _inputs()
    inputs["input_ids"][1, 4:] = 1  # RoBERTa pads with pad_token_id 1; positions skip them
    return inputs


def test_roberta_layout_has_robertas_head_and_reloads(tmp_path):
    config = _config(layout="roberta", pad_token_id=1, type_vocab_size=1, max_position_embeddings=20)
    model = CompactBertForSequenceClassification(config).eval()
    assert model.bert.pooler is None and isinstance(model.classifier, RobertaClassificationHead)
    assert isinstance(model.bert.embeddings, CompactRobertaEmbeddings)
    assert (model.classifier.dense.weight.shape, model.classifier.out_proj.weight.shape) == (
        (30, 30), (3, 30))
    labels = torch.tensor([2, 0])
    with torch.no_grad():
        out = model(**_roberta_inputs(), labels=labels)
        as_tuple = model(**_roberta_inputs(), labels=labels, return_dict=False)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))
    torch.testing.assert_close(as_tuple[1], out.logits)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.layout == "roberta"
    # The encoder of the saved classifier (a new pooler, as RobertaModel from a classifier).
    encoder = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(encoder.embeddings, CompactRobertaEmbeddings)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**_roberta_inputs()).logits, out.logits)
        torch.testing.assert_close(encoder(**_roberta_inputs()).last_hidden_state,
                                   model.bert(**_roberta_inputs()).last_hidden_state)
