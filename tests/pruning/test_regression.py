"""Every method on a regression head (STS-B: one float output, MSE): it trains, and whatever
it distils pulls the student's scores towards the teacher's instead of doing nothing."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import BertForSequenceClassification, BertModel

from pruning.compact import CompactBertForSequenceClassification
from pruning.methods import METHOD_NAMES, build_distiller, build_method
from tests.tiny import tiny_bert_config

CONFIG = tiny_bert_config(num_labels=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
STEPS = 6


def _batch(step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return {"input_ids": torch.randint(0, 100, (8, 6), generator=g),
            "attention_mask": torch.ones(8, 6, dtype=torch.long),
            "token_type_ids": torch.zeros(8, 6, dtype=torch.long),
            "labels": torch.rand(8, generator=g) * 5.0}  # similarity scores in [0, 5]


def _student(name: str, teacher: BertForSequenceClassification) -> torch.nn.Module:
    if name != "homodistil":
        return copy.deepcopy(teacher)
    encoder = BertModel(CONFIG, add_pooling_layer=True)
    encoder.load_state_dict(teacher.bert.state_dict())
    stage_a = build_distiller(name, encoder, teacher=copy.deepcopy(encoder), total_steps=2,
                              final_sparsity=0.5, options={"update_every": 1})
    for step in range(2):
        stage_a.on_step_start(step)
        loss, _ = stage_a.loss(stage_a.module, {k: v for k, v in _batch(step).items() if k != "labels"})
        loss.backward()
        stage_a.on_step_end(step)
        stage_a.module.zero_grad()
    compact = stage_a.export()
    model = CompactBertForSequenceClassification(compact.config.__class__(**compact.config.to_dict()
                                                                          | {"num_labels": 1}))
    model.bert.load_state_dict(compact.state_dict())
    return model


@pytest.mark.parametrize("name", [n for n in METHOD_NAMES if n != "dense"])
def test_every_method_trains_a_regression_head(name: str, train_step) -> None:
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(CONFIG).eval()
    student = _student(name, teacher)
    method = build_method(name, student, teacher=teacher, total_steps=STEPS,
                          final_sparsity=0.5, options={})
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    for step in range(STEPS):  # a NaN or infinite loss raises NonFiniteLossError
        loss, logs = train_step(method, _batch(step), optimizer, step=step, model=student)
        assert loss.ndim == 0, (name, step, logs)
    with torch.no_grad():
        scores = student(**{k: v for k, v in _batch(99).items() if k != "labels"}).logits
    assert scores.shape == (8, 1) and bool(torch.isfinite(scores).all())


def test_homodistil_finetune_distils_a_regression_teacher_by_mse() -> None:
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(CONFIG).eval()
    student = _student("homodistil", teacher)
    plain = build_method("homodistil", student, teacher=teacher, total_steps=1, final_sparsity=0.5,
                         options={"kd_weight": 0.0})
    distilling = build_method("homodistil", student, teacher=teacher, total_steps=1, final_sparsity=0.5,
                              options={"kd_weight": 1.0})
    batch = _batch(0)
    with torch.no_grad():
        gap = torch.nn.functional.mse_loss(student(**{k: v for k, v in batch.items() if k != "labels"}).logits,
                                           teacher(**{k: v for k, v in batch.items() if k != "labels"}).logits)
        total, logs = distilling.loss(student, batch)
        task, _ = plain.loss(student, batch)
    assert logs["kd_loss"] == pytest.approx(float(gap), rel=1e-4) and float(gap) > 0
    assert float(total) == pytest.approx(float(task) + float(gap), rel=1e-4)
