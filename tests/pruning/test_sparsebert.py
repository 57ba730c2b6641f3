from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import BertForSequenceClassification

from pruning.accounting import encoder_sparsity, matrix_sparsities
from pruning.masks import kept_count
from pruning.methods import METHOD_SPECS, build_method, method_options
from pruning.features import capture_attention_scores
from pruning.methods.sparsebert import SparseBert

TARGET = 0.9


def _padded_batch(make_batch) -> dict[str, torch.Tensor]:
    batch = make_batch(torch.Generator().manual_seed(0), size=4, length=7)
    batch["attention_mask"][1, 5:] = 0
    batch["attention_mask"][3, 3:] = 0
    return batch


def test_registered_from_pretrained_with_a_teacher_and_the_papers_defaults():
    spec = METHOD_SPECS["sparsebert"]
    assert spec.starts_from == "pretrained" and spec.needs_teacher
    opts = method_options("sparsebert")
    assert opts["end_fraction"] == 1.0 and opts["start_fraction"] == 0.0
    assert opts["hidden_weight"] == opts["attention_weight"] == opts["logit_weight"] == 1.0
    assert opts["update_every"] is None and opts["allocation"] == "local"


def test_pre_softmax_scores_match_a_manual_computation(tiny_bert, make_batch):
    model = tiny_bert().eval()
    model.config._attn_implementation = "eager"  # so transformers also returns its softmax
    batch = _padded_batch(make_batch)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad(), capture_attention_scores(model) as scores:
        out = model(**inputs, output_hidden_states=True, output_attentions=True)
    assert len(scores) == 2 and scores[0].shape == (4, 2, 7, 7)
    for layer, (got, hidden) in enumerate(zip(scores, out.hidden_states)):
        attn = model.bert.encoder.layer[layer].attention.self
        q = F.linear(hidden, attn.query.weight, attn.query.bias).view(4, 7, 2, 16).transpose(1, 2)
        k = F.linear(hidden, attn.key.weight, attn.key.bias).view(4, 7, 2, 16).transpose(1, 2)
        manual = torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(16)
        assert torch.allclose(got, manual, atol=1e-5)
        # softmax(scores + additive key mask) is what the model's attention used
        additive = (1 - batch["attention_mask"][:, None, None, :].float()) * torch.finfo(torch.float32).min
        assert torch.allclose(torch.softmax(got + additive, dim=-1), out.attentions[layer], atol=1e-5)


def test_loss_is_zero_between_a_model_and_its_copy_except_the_soft_ce(tiny_bert, make_batch):
    student = tiny_bert().eval()
    method = SparseBert(student, teacher=copy.deepcopy(student), final_sparsity=TARGET, total_steps=100)
    loss, logs = method.loss(student, _padded_batch(make_batch))
    assert logs["hidden_loss"] == pytest.approx(0.0, abs=1e-10)
    assert logs["attention_loss"] == pytest.approx(0.0, abs=1e-10)
    # soft CE against itself is the teacher's entropy: at most log(2) for 2 classes
    assert 0.0 < logs["prediction_loss"] <= math.log(2) + 1e-6
    assert float(loss.detach()) == pytest.approx(logs["prediction_loss"], rel=1e-5)


def test_about_100_mask_updates_over_the_whole_run_without_warm_up(tiny_bert):
    total = 1000
    method = build_method("sparsebert", tiny_bert(), teacher=tiny_bert(seed=1), total_steps=total,
                          final_sparsity=0.95, options={})
    schedule = method.schedule
    updates = sum(schedule.is_update_step(s) for s in range(total))
    assert schedule.update_every == 10 and 95 <= updates <= 105
    assert schedule.start_step == 0 and schedule.end_step == total - 1
    assert schedule.sparsity_at(10) > 0  # no dense warm-up
    assert schedule.sparsity_at(total - 1) == 0.95
    given = build_method("sparsebert", tiny_bert(), teacher=tiny_bert(seed=1), total_steps=total,
                         final_sparsity=0.95, options={"update_every": 3})
    assert given.schedule.update_every == 3


def test_training_reaches_exact_sparsity_and_only_the_student_learns(tiny_bert, make_batch, train_step):
    total = 10
    teacher = tiny_bert(seed=1)
    method = SparseBert(tiny_bert(), teacher=teacher, final_sparsity=TARGET, total_steps=total,
                        update_every=2)
    opt = torch.optim.AdamW(method.student.parameters(), lr=1e-2, weight_decay=0.01)
    teacher_before = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    generator = torch.Generator().manual_seed(1)
    for step in range(total):
        _, logs = train_step(method, make_batch(generator, size=4, length=6), opt, step=step)
        assert set(logs) >= {"task_loss", "hidden_loss", "attention_loss", "prediction_loss"}
        # zero_grad clears the student's gradients only: a teacher gradient would still be here.
        assert all(p.grad is None for p in teacher.parameters())
        for name, w in method.params.items():
            assert bool((w.detach()[~method.masks[name]] == 0).all()), (step, name)
    for name, w in method.params.items():
        pruned = w.numel() - kept_count(w.numel(), TARGET)
        assert matrix_sparsities(method.student)[name] * w.numel() == pytest.approx(pruned)
    assert encoder_sparsity(method.student) == pytest.approx(TARGET, abs=1e-3)
    assert all(torch.equal(p.detach(), teacher_before[n]) for n, p in teacher.named_parameters())


def test_regression_uses_mse_to_gold(tiny_bert, make_batch):
    student = tiny_bert(num_labels=1).eval()
    method = SparseBert(student, teacher=copy.deepcopy(student), final_sparsity=0.5, total_steps=10)
    batch = make_batch(torch.Generator().manual_seed(0))
    batch["labels"] = torch.tensor([0.5, 1.0, -1.0, 2.0])
    _, logs = method.loss(student, batch)
    with torch.no_grad():
        pred = student(**{k: v for k, v in batch.items() if k != "labels"}).logits.squeeze(-1)
    assert logs["prediction_loss"] == pytest.approx(float(F.mse_loss(pred, batch["labels"])), rel=1e-5)


def test_mismatched_teacher_is_refused(tiny_bert, tiny_config):
    torch.manual_seed(0)
    wide = BertForSequenceClassification(tiny_config(hidden_size=64))
    with pytest.raises(ValueError, match="must match"):
        SparseBert(tiny_bert(), teacher=wide, final_sparsity=0.5, total_steps=10)


def test_prediction_loss_is_the_authors_mean_over_batch_and_classes(tiny_bert, make_batch):
    student, teacher = tiny_bert(num_labels=3).eval(), tiny_bert(seed=1, num_labels=3).eval()
    method = SparseBert(student, teacher=teacher, final_sparsity=0.5, total_steps=10)
    batch = make_batch(torch.Generator().manual_seed(0))
    _, logs = method.loss(student, batch)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        targets = torch.softmax(teacher(**inputs).logits, -1)
        likelihood = torch.log_softmax(student(**inputs).logits, -1)
    by_hand = float((-targets * likelihood).mean())  # [4, 3] entries averaged, as TinyBERT's code
    assert logs["prediction_loss"] == pytest.approx(by_hand, rel=1e-5)
