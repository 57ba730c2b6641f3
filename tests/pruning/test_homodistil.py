from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    BertModel,
)

from pruning.accounting import count_params
from pruning.compact import CompactBertForSequenceClassification, CompactBertModel, Widths, count_params_for
from pruning.methods import METHOD_SPECS, PruningMethod, build_method
from pruning.methods.base import task_loss
from pruning.methods.homodistil import CompactFinetune, HomotopicDistiller
from tests.tiny import VOCAB, tiny_bert_config, train_step

# No dropout: the distiller's runs must be reproducible step for step.
CONFIG = tiny_bert_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
TOTAL_STEPS = 9  # widths shrink up to step 6 (2/3 of the run), then stay
KEEP = 0.5


def _encoders(seed: int = 0) -> tuple[BertModel, BertModel]:
    torch.manual_seed(seed)
    teacher = BertModel(CONFIG)
    return copy.deepcopy(teacher), teacher


def _batch(step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    mask = torch.ones(4, 8, dtype=torch.long)
    mask[0, 5:] = 0
    return {"input_ids": torch.randint(0, VOCAB, (4, 8), generator=g), "attention_mask": mask,
            "token_type_ids": torch.zeros(4, 8, dtype=torch.long)}


def _distiller(student: BertModel, teacher: BertModel, **options: object) -> HomotopicDistiller:
    return HomotopicDistiller(student, teacher=teacher, total_steps=TOTAL_STEPS,
                              final_sparsity=1 - KEEP, update_every=2, **options)


def _roberta_batch(step: int) -> dict[str, torch.Tensor]:
    """_batch with <s> first, RoBERTa's pad id 1 where the mask is 0, no token_type_ids."""
    batch = _batch(step)
    del batch["token_type_ids"]
    batch["input_ids"] = batch["input_ids"].clamp_min(3).masked_fill(batch["attention_mask"] == 0, 1)
    batch["input_ids"][:, 0] = 0
    return batch


def _run(method: HomotopicDistiller, optimizer: torch.optim.Optimizer, steps: range,
         batch: Callable[[int], dict[str, torch.Tensor]] = _batch) -> list[Widths]:
    """The product's step (start, loss, backward, step, on_step_end with the gradients still
    there, zero_grad; a non-finite loss raises); the widths after each step."""
    widths = []
    for step in steps:
        train_step(method, batch(step), optimizer, step=step)
        widths.append(method.masks.widths())
    return widths


def _optimizer(method: HomotopicDistiller) -> torch.optim.Optimizer:
    params = [p for p in method.module.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)


def test_student_starts_with_no_gap_to_its_teacher():
    method = _distiller(*_encoders())
    assert isinstance(method, PruningMethod)
    loss, logs = method.loss(method.module, _batch(0))
    assert torch.isfinite(loss)
    assert logs["hidden_loss"] < 1e-10 and logs["attention_loss"] < 1e-6
    assert logs["prediction_loss"] < 1e-6 and logs["kept_params"] == 1.0


@pytest.mark.parametrize("unit, score", [("heads", "sensitivity"), ("inner", "platon"),
                                         ("heads", "sensitivity_abs_sum")])
def test_distiller_reaches_target_widths_and_exports_within_budget(unit, score):
    student, teacher = _encoders()
    full_params = count_params(student)
    method = _distiller(student, teacher, attention_unit=unit, score=score)
    widths = _run(method, _optimizer(method), range(TOTAL_STEPS))
    end = method.schedule.end_step
    assert widths[end] == method.target and widths[-1] == method.target
    assert widths[0] == Widths.of_config(CONFIG) and widths[end - 1] != method.target
    for earlier, later in zip(widths, widths[1:]):  # widths only ever shrink
        assert later.hidden <= earlier.hidden and all(b <= a for a, b in zip(earlier.ffn, later.ffn))
    compact = method.export()
    assert isinstance(compact, CompactBertModel)
    assert count_params(compact) == count_params_for(CONFIG, method.target)
    assert count_params(compact) <= KEEP * full_params
    assert method.target_sparsity() >= 1 - KEEP


def test_exported_model_computes_what_the_masked_student_computes():
    method = _distiller(*_encoders())
    _run(method, _optimizer(method), range(TOTAL_STEPS))
    compact = method.export().eval()
    method.student.eval()
    with torch.no_grad():
        masked, sliced = method.student(**_batch(50)), compact(**_batch(50))
    kept = method.masks.hidden
    assert bool((masked.last_hidden_state[..., ~kept] == 0).all())
    torch.testing.assert_close(sliced.last_hidden_state, masked.last_hidden_state[..., kept],
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sliced.pooler_output, masked.pooler_output[..., kept], atol=1e-5, rtol=1e-5)


def test_resuming_from_state_dict_continues_identically():
    method = _distiller(*_encoders(), score="platon")
    optimizer = _optimizer(method)
    _run(method, optimizer, range(4))
    saved = (copy.deepcopy(method.state_dict()), copy.deepcopy(method.student.state_dict()),
             copy.deepcopy(optimizer.state_dict()))
    assert all(isinstance(v, torch.Tensor) for v in saved[0].values())
    _run(method, optimizer, range(4, TOTAL_STEPS))

    student, teacher = _encoders()
    student.load_state_dict(saved[1])
    resumed = _distiller(student, teacher, score="platon")
    resumed.load_state_dict(saved[0])
    assert resumed.step == 3 and resumed.mask_checksum() != _distiller(*_encoders()).mask_checksum()
    resumed_optimizer = _optimizer(resumed)
    resumed_optimizer.load_state_dict(saved[2])
    _run(resumed, resumed_optimizer, range(4, TOTAL_STEPS))
    assert resumed.mask_checksum() == method.mask_checksum()
    for (name, a), b in zip(method.module.named_parameters(), resumed.module.parameters()):
        torch.testing.assert_close(a, b, msg=name)


def test_scores_need_the_gradients_before_zero_grad():
    method = _distiller(*_encoders())
    with pytest.raises(ValueError, match="zero_grad"):
        method.on_step_end(0)


def test_explicit_widths_and_infeasible_budgets():
    method = _distiller(*_encoders(), widths={"hidden": 16, "heads": 1, "ffn": [8, 0]})
    assert method.target == Widths(16, (1, 1), (16, 16), (8, 0))
    with pytest.raises(ValueError, match="budget"):
        _distiller(*_encoders(), shrink_hidden=False)


def _task_models() -> tuple[CompactBertForSequenceClassification, BertForSequenceClassification]:
    method = _distiller(*_encoders())
    _run(method, _optimizer(method), range(TOTAL_STEPS))
    config = method.export().config
    config.num_labels = 2
    torch.manual_seed(1)
    student = CompactBertForSequenceClassification(config)
    student.bert.load_state_dict(method.export().state_dict())
    return student, BertForSequenceClassification(BertConfig(**CONFIG.to_dict() | {"num_labels": 2}))


def test_compact_finetune_adds_logit_distillation_to_the_task_loss():
    student, teacher = _task_models()
    batch = _batch(0) | {"labels": torch.tensor([0, 1, 1, 0])}
    plain = CompactFinetune(student, teacher=teacher, total_steps=5, kd_weight=0.0)
    loss, logs = plain.loss(student, batch)
    torch.testing.assert_close(loss, task_loss(student, batch))
    assert "kd_loss" not in logs
    method = build_method("homodistil", student, teacher=teacher, total_steps=5, final_sparsity=0.0,
                          options={"kd_weight": 2.0})
    assert isinstance(method, CompactFinetune) and method.target_sparsity() == 0.0
    loss, logs = method.loss(student, batch)
    loss.backward()
    assert logs["kd_loss"] > 0
    assert loss.item() == pytest.approx(logs["task_loss"] + 2 * logs["kd_loss"], rel=1e-5)
    assert student.classifier.weight.grad is not None
    assert METHOD_SPECS["homodistil"].starts_from == "distilled"
    # The grid's budget reaches the task stage as a label only: the student is already cut to it.
    budgeted = build_method("homodistil", student, teacher=teacher, total_steps=5, final_sparsity=0.5)
    assert budgeted.budget == 0.5 and budgeted.target_sparsity() == 0.0


def test_prune_first_cuts_to_the_target_at_once_then_only_distils():
    student, teacher = _encoders()
    method = _distiller(student, teacher, path="prune_first")
    widths = _run(method, _optimizer(method), range(TOTAL_STEPS))
    full = Widths.of_config(CONFIG)
    # update_every=2: two steps of scores at full width, then one cut to the target
    assert widths[0] == full and widths[1] == method.target and widths[-1] == method.target
    homotopic = _distiller(*_encoders())
    assert _run(homotopic, _optimizer(homotopic), range(2))[1] != homotopic.target
    assert method.export().config.hidden_size == method.target.hidden


def test_from_scratch_is_a_random_model_of_the_target_shape_distilled():
    student, teacher = _encoders()
    method = _distiller(student, teacher, path="from_scratch")
    assert method.masks.widths() == method.target  # the target shape from step 0
    assert not torch.equal(student.encoder.layer[0].intermediate.dense.weight,
                           teacher.encoder.layer[0].intermediate.dense.weight)
    _, logs = method.loss(method.module, _batch(0))
    assert logs["hidden_loss"] > 1e-3  # no free start at the teacher, unlike the homotopic path
    widths = _run(method, _optimizer(method), range(TOTAL_STEPS))
    assert set(widths) == {method.target}
    assert count_params(method.export()) == count_params_for(CONFIG, method.target)


def test_unknown_path_is_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match="prune_first"):
        _distiller(*_encoders(), path="oneshot")


def _roberta_encoders(tiny_roberta: Callable, kind: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    teacher = tiny_roberta(kind, head=False, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return copy.deepcopy(teacher), teacher


@pytest.mark.parametrize("kind, path", [("roberta", "homotopic"), ("xlm-roberta", "homotopic"),
                                        ("xlm-roberta", "prune_first"), ("xlm-roberta", "from_scratch")])
def test_distiller_slices_a_roberta_encoder_into_an_equal_compact_model(tiny_roberta, kind, path):
    student, teacher = _roberta_encoders(tiny_roberta, kind)
    full_params = count_params(student)
    method = _distiller(student, teacher, path=path)
    _, logs = method.loss(method.module, _roberta_batch(0))
    if path != "from_scratch":  # the student starts as its teacher
        assert logs["hidden_loss"] < 1e-10 and logs["attention_loss"] < 1e-6
    widths = _run(method, _optimizer(method), range(TOTAL_STEPS), batch=_roberta_batch)
    assert widths[-1] == method.target != Widths.of_config(student.config)
    compact = method.export().eval()
    assert isinstance(compact, CompactBertModel) and compact.config.layout == "roberta"
    assert count_params(compact) == count_params_for(student.config, method.target)
    assert count_params(compact) <= KEEP * full_params
    method.student.eval()
    with torch.no_grad():
        masked, sliced = method.student(**_roberta_batch(50)), compact(**_roberta_batch(50))
    kept = method.masks.hidden
    torch.testing.assert_close(sliced.last_hidden_state, masked.last_hidden_state[..., kept],
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sliced.pooler_output, masked.pooler_output[..., kept],
                               atol=1e-5, rtol=1e-5)


def test_compact_finetune_trains_the_exported_xlm_roberta_classifier(tiny_roberta, tmp_path):
    method = _distiller(*_roberta_encoders(tiny_roberta, "xlm-roberta"))
    _run(method, _optimizer(method), range(TOTAL_STEPS), batch=_roberta_batch)
    export = method.export().eval()
    export.save_pretrained(tmp_path)
    torch.manual_seed(1)  # the new head, as infra.models.pretrained.load_classifier seeds it
    student = AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=2)
    assert isinstance(student, CompactBertForSequenceClassification)
    assert student.config.layout == "roberta" and student.bert.pooler is None
    with torch.no_grad():  # the encoder is stage a's export
        torch.testing.assert_close(student.eval().bert(**_roberta_batch(50)).last_hidden_state,
                                   export(**_roberta_batch(50)).last_hidden_state)
    teacher = tiny_roberta("xlm-roberta", seed=2)  # stands in for the fine-tuned XLM-R
    finetune = build_method("homodistil", student.train(), teacher=teacher, total_steps=4,
                            final_sparsity=0.5)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    for step in range(4):
        finetune.on_step_start(step)
        batch = _roberta_batch(step) | {"labels": torch.tensor([0, 1, 1, 0])}
        loss, logs = finetune.loss(student, batch)
        loss.backward()
        assert torch.isfinite(loss) and logs["kd_loss"] > 0
        assert loss.item() == pytest.approx(logs["task_loss"] + logs["kd_loss"], rel=1e-5)
        assert student.classifier.dense.weight.grad.abs().sum() > 0
        assert student.classifier.out_proj.weight.grad.abs().sum() > 0
        optimizer.step()
        finetune.on_step_end(step)
        optimizer.zero_grad(set_to_none=True)
