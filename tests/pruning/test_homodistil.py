from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
)

from infra.models import pretrained
from infra.train import checkpoints, loop
from pruning import losses
from pruning.accounting import count_params
from pruning.compact import CompactBertForSequenceClassification, CompactBertModel, Widths, count_params_for
from pruning.methods import METHOD_SPECS, PruningMethod, build_distiller, build_method
from pruning.methods.base import task_loss
from pruning.methods.homodistil import CompactFinetune, HomotopicDistiller
from pruning.methods.homodistil.prediction import mask_tokens
from tests.tiny import VOCAB, tiny_bert_config, train_step

ROOT = Path(__file__).resolve().parents[2]

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
    method = _distiller(*_encoders(), slice_in_run=False)
    _run(method, _optimizer(method), range(TOTAL_STEPS))
    assert method.present is None and method.student.config.hidden_size == CONFIG.hidden_size
    compact = method.export().eval()
    method.student.eval()
    with torch.no_grad():
        masked, sliced = method.student(**_batch(50)), compact(**_batch(50))
    kept = method.masks.hidden
    assert bool((masked.last_hidden_state[..., ~kept] == 0).all())
    torch.testing.assert_close(sliced.last_hidden_state, masked.last_hidden_state[..., kept],
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sliced.pooler_output, masked.pooler_output[..., kept], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("slice_in_run", [True, False])
def test_resuming_from_state_dict_continues_identically(slice_in_run):
    method = _distiller(*_encoders(), score="platon", slice_in_run=slice_in_run)
    optimizer = _optimizer(method)
    _run(method, optimizer, range(4))
    saved = (copy.deepcopy(method.state_dict()), copy.deepcopy(method.module.state_dict()),
             copy.deepcopy(optimizer.state_dict()))
    assert all(isinstance(v, torch.Tensor) for v in saved[0].values())
    _run(method, optimizer, range(4, TOTAL_STEPS))

    # The checkpoint's order (infra.train.checkpoints.load): optimizer built, method state,
    # weights (a cut student is cut again first, so they fit), optimizer state.
    resumed = _distiller(*_encoders(), score="platon", slice_in_run=slice_in_run)
    resumed_optimizer = _optimizer(resumed)
    resumed.load_state_dict(saved[0])
    resumed.module.load_state_dict(saved[1])
    assert resumed.step == 3 and resumed.mask_checksum() != _distiller(*_encoders()).mask_checksum()
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
    with torch.no_grad():  # no graph left behind: the run cuts these parameters
        _, logs = method.loss(method.module, _roberta_batch(0))
    if path != "from_scratch":  # the student starts as its teacher
        assert logs["hidden_loss"] < 1e-10 and logs["attention_loss"] < 1e-6
    widths = _run(method, _optimizer(method), range(TOTAL_STEPS), batch=_roberta_batch)
    assert widths[-1] == method.target != Widths.of_config(student.config)
    compact = method.export().eval()
    assert isinstance(compact, CompactBertModel) and compact.config.layout == "roberta"
    assert count_params(compact) == count_params_for(student.config, method.target)
    assert count_params(compact) <= KEEP * full_params
    method.student.eval()  # cut in the run: its remaining hidden dims are all kept
    with torch.no_grad():
        masked, sliced = method.student(**_roberta_batch(50)), compact(**_roberta_batch(50))
    kept = method.masks.group_vectors(method.present)["hidden"]
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


# ---------------------------------------------------------------- the prediction term (issue 14 A)


def test_prediction_of_a_headless_encoder_is_the_pooled_cosine_not_a_softmax_over_features():
    """The old term, KL of softmaxes over the 32 features of the mean-pooled state, is gone."""
    method = _distiller(*_encoders())
    assert method.prediction.kind == "pooled_cosine"
    with torch.no_grad():  # turn the student away from its teacher
        method.student.encoder.layer[1].output.dense.weight.mul_(3.0)
        _, logs = method.loss(method.module, _batch(0))
        out = method.module(**_batch(0))
        teacher = method.teacher(**_batch(0)).last_hidden_state
    mask = _batch(0)["attention_mask"]
    pool = lambda h: (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # noqa: E731
    cosine = 1 - torch.nn.functional.cosine_similarity(pool(out["hidden_states"][-1]), pool(teacher)).mean()
    assert logs["prediction_loss"] == pytest.approx(float(cosine), rel=1e-5) and cosine > 1e-4
    old = losses.kl_logits(pool(out["hidden_states"][-1]), pool(teacher))
    assert logs["prediction_loss"] != pytest.approx(float(old), rel=1e-2)
    none = _distiller(*_encoders(), prediction="none")
    with torch.no_grad():
        _, logs = none.loss(none.module, _batch(0))
    assert logs["prediction_loss"] == 0.0
    with pytest.raises(ValueError, match="masked-LM head"):
        _distiller(*_encoders(), prediction="mlm")


def _mlm_checkpoint(folder: Path) -> Path:
    """A tiny BertForMaskedLM saved as a checkpoint would be (weights with cls.predictions.*),
    with the fixture tokenizer, whose vocabulary it takes."""
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(**CONFIG.to_dict() | {"vocab_size": 52}))
    model.save_pretrained(folder)
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(ROOT / "tests/fixtures/tiny-bert" / name, folder / name)
    return folder


def test_a_checkpoint_with_an_mlm_head_distils_the_mlm_predictions(tmp_path):
    folder = str(_mlm_checkpoint(tmp_path / "mlm"))
    assert pretrained.has_mlm_head(folder)
    student, teacher = (pretrained.load_encoder(folder, seed=3, mlm_head=True) for _ in range(2))
    assert isinstance(student, BertForMaskedLM) and student.config.mask_token_id is not None
    method = build_distiller("homodistil", student, teacher=teacher, total_steps=TOTAL_STEPS,
                             final_sparsity=1 - KEEP, options={"update_every": 2})
    assert method.prediction.kind == "mlm" and isinstance(method.module.cls, torch.nn.Module)
    batch = {k: v % 52 for k, v in _batch(0).items()}
    with torch.no_grad():
        _, logs = method.loss(method.module, batch)
    # The student is its teacher's copy: their MLM predictions agree; the MLM loss is a real one.
    assert logs["prediction_loss"] < 1e-6 and logs["mlm_loss"] > 1.0
    ids, chosen = method.prediction.mask(batch["input_ids"], batch["attention_mask"], step=0)
    again = build_distiller("homodistil", pretrained.load_encoder(folder, seed=3, mlm_head=True),
                            teacher=teacher, total_steps=TOTAL_STEPS, final_sparsity=1 - KEEP)
    assert torch.equal(again.prediction.mask(batch["input_ids"], batch["attention_mask"], step=0)[1], chosen)
    other = build_distiller("homodistil", pretrained.load_encoder(folder, seed=4, mlm_head=True),
                            teacher=teacher, total_steps=TOTAL_STEPS, final_sparsity=1 - KEEP)
    masks = [other.prediction.mask(batch["input_ids"], batch["attention_mask"], step=s)[1] for s in range(4)]
    assert any(not torch.equal(m, chosen) for m in masks)  # the seed (and the step) pick the tokens
    widths = _run(method, _optimizer(method), range(TOTAL_STEPS), batch=lambda s: {
        k: v % 52 for k, v in _batch(s).items()})
    assert widths[-1] == method.target
    assert method.module.cls.predictions.transform.dense.weight.shape == (method.target.hidden,) * 2
    assert method.module.cls.predictions.decoder.weight is method.student.embeddings.word_embeddings.weight
    compact = method.export()  # the encoder only: the head stays behind
    assert isinstance(compact, CompactBertModel) and count_params(compact) == count_params_for(
        compact.config, method.target, pooler=False)
    plain = pretrained.load_encoder(folder, seed=3)  # without asking for it, the bare encoder
    assert isinstance(plain, BertModel)


def test_masking_spares_the_first_and_last_real_token_and_takes_about_15_percent():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, VOCAB, (64, 32), generator=g)
    mask = torch.ones_like(ids)
    mask[::2, 20:] = 0  # padded rows: their last real token is at 19
    masked, chosen = mask_tokens(ids, mask, torch.Generator().manual_seed(1), probability=0.15,
                                 mask_token_id=3, vocab_size=VOCAB)
    assert not chosen[:, 0].any() and not chosen[::2, 19].any() and not chosen[1::2, 31].any()
    assert not (chosen & (mask == 0)).any()
    assert 0.12 < float(chosen.sum()) / float(mask.sum() - 2 * 64) < 0.18
    assert torch.equal(masked[~chosen], ids[~chosen])
    share = float((masked[chosen] == 3).float().mean())
    assert 0.7 < share < 0.9  # 80% [MASK], the rest random or kept


# ---------------------------------------------------------------- slicing in the run (issue 14 B)


@pytest.mark.parametrize("options", [{}, {"attention_unit": "inner", "score": "platon"},
                                     {"path": "prune_first"}, {"shrink_hidden": True, "widths": {
                                         "hidden": 12, "heads": [0, 1], "ffn": [5, 0]}}])
def test_a_student_cut_in_the_run_is_the_masked_runs_student(options):
    """Same seed, same steps: cut at every width update (AdamW's state with it) or masked
    throughout and cut at export, the students agree."""
    options = {k: v for k, v in options.items() if k != "shrink_hidden"}
    runs = {}
    for cut in (True, False):
        method = _distiller(*_encoders(), slice_in_run=cut, **options)
        widths = _run(method, _optimizer(method), range(TOTAL_STEPS))
        runs[cut] = method, widths
    (sliced, widths), (masked, masked_widths) = runs[True], runs[False]
    assert widths == masked_widths and sliced.mask_checksum() == masked.mask_checksum()
    assert sliced.student.config.hidden_size == sliced.target.hidden  # physically cut in the run
    assert count_params(sliced.student) == count_params(sliced.export())
    assert masked.student.config.hidden_size == CONFIG.hidden_size
    a, b = sliced.export().eval(), masked.export().eval()
    with torch.no_grad():
        torch.testing.assert_close(a(**_batch(50)).last_hidden_state, b(**_batch(50)).last_hidden_state,
                                   atol=2e-5, rtol=1e-5)


def test_a_wrapped_module_is_not_cut():
    """Under a wrapper (DDP) the module keeps its shapes: the student stays masked."""

    class Wrapper(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, **inputs):
            return self.inner(**inputs)

    method = _distiller(*_encoders())
    optimizer, wrapper = _optimizer(method), Wrapper(method.module)
    for step in range(TOTAL_STEPS):
        train_step(method, _batch(step), optimizer, step=step, model=wrapper)
    assert method.present is None and method.masks.widths() == method.target
    assert method.student.config.hidden_size == CONFIG.hidden_size


def test_a_checkpoint_after_a_cut_resumes_to_the_same_student(tmp_path):
    """infra.train.checkpoints mid-run, after cuts: a fresh job (full-width student, its
    optimizer) loads it and ends where the uninterrupted run ends."""

    def job() -> tuple[HomotopicDistiller, torch.optim.Optimizer, object]:
        method = _distiller(*_encoders(), score="platon")
        optimizer = loop.make_optimizer(method.module, learning_rate=1e-3, weight_decay=0.01)
        return method, optimizer, loop.make_scheduler(optimizer, total_steps=TOTAL_STEPS, warmup_fraction=0.2)

    def fit(parts, start: int, stop: int) -> None:
        method, optimizer, scheduler = parts
        loop.fit(method, method.module, (_batch(s) for s in range(start, stop)), steps=stop,
                 optimizer=optimizer, scheduler=scheduler, max_grad_norm=1.0, start=start)

    whole = job()
    fit(whole, 0, 5)
    assert whole[0].present is not None  # cut before the checkpoint
    method, optimizer, scheduler = whole
    checkpoints.save(tmp_path, module=method.module, method_state=method.state_dict(), optimizer=optimizer,
                     scheduler=scheduler, where=checkpoints.position(5, TOTAL_STEPS, 1))
    fit(whole, 5, TOTAL_STEPS)

    resumed = job()
    where = checkpoints.load(tmp_path, module=resumed[0].module, method=resumed[0], optimizer=resumed[1],
                             scheduler=resumed[2], batches_per_epoch=TOTAL_STEPS, world_size=1)
    assert where.step == 5
    fit(resumed, 5, TOTAL_STEPS)
    assert resumed[0].mask_checksum() == whole[0].mask_checksum()
    for (name, a), b in zip(whole[0].module.named_parameters(), resumed[0].module.parameters()):
        assert torch.equal(a, b), name  # to the bit, as an uninterrupted run
    a, b = resumed[0].export().eval(), whole[0].export().eval()
    with torch.no_grad():
        assert torch.equal(a(**_batch(50)).last_hidden_state, b(**_batch(50)).last_hidden_state)


def test_a_masked_students_pruned_groups_get_no_gradient():
    """Clipping sees only what the step keeps: in a student masked but not cut (DDP-wrapped,
    or slice_in_run off), the zeroed rows, columns, heads and hidden dims get exactly zero
    gradient, since every path through them is zeroed too, so HomoDistil needs no
    mask_gradients of its own (unlike unstructured masks, pruning.methods.base)."""
    method = _distiller(*_encoders(), slice_in_run=False)
    optimizer = _optimizer(method)
    _run(method, optimizer, range(TOTAL_STEPS))
    assert method.masks.widths() == method.target and method.present is None  # masked, not cut
    method.on_step_start(TOTAL_STEPS)
    loss, _ = method.loss(method.module, _batch(TOTAL_STEPS))
    loss.backward()
    pruned = kept = 0
    for name, p in method.student.named_parameters():
        if p.grad is None or not p.requires_grad:
            continue
        zero = p.detach() == 0
        assert torch.count_nonzero(p.grad[zero]) == 0, name
        pruned, kept = pruned + int(zero.sum()), kept + int(torch.count_nonzero(p.grad[~zero]))
    assert pruned > 0 and kept > 0  # both kinds were there to see
