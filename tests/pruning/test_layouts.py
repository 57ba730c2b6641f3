from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, DistilBertConfig, RobertaConfig, XLMRobertaConfig
from transformers.models.bert.modeling_bert import BertEmbeddings

from pruning.accounting import encoder_sparsity, matrix_sparsities
from pruning.compact import CompactBertConfig
from pruning.features import capture_attention_scores
from pruning.layouts import CompactRobertaEmbeddings, layout_of, to_compact_prefix
from pruning.methods import METHOD_SPECS, build_method


def test_layout_follows_the_model_type():
    assert layout_of(BertConfig()) == "bert"
    assert layout_of(RobertaConfig()) == layout_of(XLMRobertaConfig()) == "roberta"
    assert layout_of(CompactBertConfig(layout="roberta")) == "roberta"
    assert layout_of(CompactBertConfig()) == "bert"  # the default: compact models saved before
    with pytest.raises(ValueError, match="distilbert"):
        layout_of(DistilBertConfig())


def test_only_the_encoder_prefix_is_renamed():
    state = {"roberta.embeddings.word_embeddings.weight": 1, "classifier.dense.weight": 2}
    assert to_compact_prefix(state, "roberta") == {"bert.embeddings.word_embeddings.weight": 1,
                                                   "classifier.dense.weight": 2}
    assert to_compact_prefix(state, "") == state


@pytest.mark.parametrize("kind", ["roberta", "xlm-roberta"])
def test_compact_embeddings_count_positions_as_roberta_does(tiny_roberta, make_roberta_batch, kind):
    encoder = tiny_roberta(kind, head=False)
    original = encoder.embeddings.eval()
    compact = CompactRobertaEmbeddings(encoder.config).eval()
    compact.load_state_dict(original.state_dict())
    batch = make_roberta_batch(torch.Generator().manual_seed(0))
    ids = batch["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(compact(input_ids=ids), original(input_ids=ids))
        torch.testing.assert_close(compact(input_ids=ids, token_type_ids=torch.zeros_like(ids)),
                                   original(input_ids=ids))
        # BERT's positions (0..T-1) would give other embeddings: the offset matters.
        bert = BertEmbeddings(encoder.config).eval()
        bert.load_state_dict(original.state_dict())
        assert not torch.allclose(bert(input_ids=ids), original(input_ids=ids), atol=1e-3)
    positions = compact.create_position_ids_from_input_ids(ids, padding_idx=1)
    assert positions[0].tolist() == list(range(2, 2 + ids.shape[1]))  # pad_token_id + 1 onwards
    assert bool((positions[batch["attention_mask"] == 0] == 1).all())  # pads at pad_token_id


@pytest.mark.parametrize("kind", ["roberta", "xlm-roberta"])
def test_pre_softmax_scores_are_captured_from_roberta_layers(tiny_roberta, make_roberta_batch, kind):
    for model in (tiny_roberta(kind).eval(), tiny_roberta(kind, head=False).eval()):
        inputs = make_roberta_batch(torch.Generator().manual_seed(0), size=3, length=7)
        inputs.pop("labels")
        with torch.no_grad(), capture_attention_scores(model) as scores:
            hidden = model(**inputs, output_hidden_states=True).hidden_states
        assert [tuple(s.shape) for s in scores] == [(3, 2, 7, 7)] * 2
        attention = model.base_model.encoder.layer[1].attention.self
        q = F.linear(hidden[1], attention.query.weight, attention.query.bias).view(3, 7, 2, 16)
        k = F.linear(hidden[1], attention.key.weight, attention.key.bias).view(3, 7, 2, 16)
        manual = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(16)
        torch.testing.assert_close(scores[1], manual, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["gmp", "sdp", "sparsebert"])
def test_unstructured_methods_prune_an_xlm_roberta_classifier(tiny_roberta, make_roberta_batch, train_step,
                                                                name):
    student = tiny_roberta("xlm-roberta")
    teacher = copy.deepcopy(student) if METHOD_SPECS[name].needs_teacher else None
    method = build_method(name, student, teacher=teacher, total_steps=6, final_sparsity=0.7,
                          options={"update_every": 1})
    head = copy.deepcopy(student.classifier.state_dict())
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3, weight_decay=0.01)
    generator = torch.Generator().manual_seed(1)
    for step in range(6):  # the product's step (a non-finite loss raises)
        _, logs = train_step(method, make_roberta_batch(generator), optimizer, step=step, model=student)
        assert all(math.isfinite(v) for v in logs.values()), logs
    assert encoder_sparsity(student) == pytest.approx(0.7, abs=0.01)
    assert len(matrix_sparsities(student)) == 12  # every roberta.encoder.layer.<i> matrix
    # The head (dense + out_proj) trains but is never pruned.
    assert all(bool(p.ne(head[k]).all()) for k, p in student.classifier.state_dict().items())
    with torch.no_grad():
        assert torch.isfinite(student(**make_roberta_batch(generator)).logits).all()
