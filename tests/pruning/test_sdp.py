from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from safetensors.torch import load_file, save_file

from pruning.accounting import encoder_sparsity, matrix_sparsities
from pruning.masks import kept_count
from pruning.methods import METHOD_SPECS, PruningMethod, build_method, method_options
from pruning.methods.sdp import SelfDistilled
from tests.tiny import train_step

TOTAL_STEPS = 12  # end_step 8 (2/3 of the run), then 4 fixed-mask steps
TARGET = 0.8
OPTIMIZERS = {
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.01),
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=1e-1, momentum=0.9, weight_decay=0.01),
}


def _sdp(tiny_bert, **options: object) -> SelfDistilled:
    student = tiny_bert()
    teacher = copy.deepcopy(student)  # the fine-tuned model's frozen copy
    return SelfDistilled(student, teacher=teacher, final_sparsity=TARGET, total_steps=TOTAL_STEPS,
                         **{"update_every": 2, **options})


def _train(method: SelfDistilled, optimizer: str, make_batch: Callable, steps: int,
           check: bool = True) -> None:
    """The step infra/ runs (its train_step: a non-finite loss raises), minus DDP."""
    model = method.student
    opt = OPTIMIZERS[optimizer](model.parameters())
    generator = torch.Generator().manual_seed(1)
    for step in range(steps):
        batch = make_batch(generator, size=8, length=6)
        _, logs = train_step(method, batch, opt, step=step, model=model)
        assert all(isinstance(v, float) for v in logs.values())
        if check:
            for name, w in method.params.items():
                assert bool((w.detach()[~method.masks[name]] == 0).all()), (step, name)


def test_registered_with_a_teacher_and_the_papers_defaults():
    spec = METHOD_SPECS["sdp"]
    assert spec.starts_from == "teacher" and spec.needs_teacher
    opts = method_options("sdp")
    assert opts["beta"] == 1.0 and opts["cc_lambda"] == 5.1e-3
    assert opts["cc_target"] == "teacher" and opts["cc_queue"] == 0  # ours: the teacher a fixed point
    assert opts["representation"] == "cls" and opts["self_loss"] == "cross_correlation"
    assert opts["teacher_mode"] == "frozen" and opts["end_fraction"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(("optimizer", "teacher_mode"),
                         [("adamw", "frozen"), ("sgd_momentum", "frozen"), ("adamw", "shared")])
def test_exact_sparsity_and_pruned_weights_stay_zero(tiny_bert, make_batch, optimizer, teacher_mode):
    method = _sdp(tiny_bert, teacher_mode=teacher_mode)
    assert isinstance(method, PruningMethod)
    _train(method, optimizer, make_batch, TOTAL_STEPS)
    sparsities = matrix_sparsities(method.student)
    for name, w in method.params.items():
        assert sparsities[name] * w.numel() == pytest.approx(w.numel() - kept_count(w.numel(), TARGET))
    total = sum(w.numel() for w in method.params.values())
    assert abs(encoder_sparsity(method.student) - TARGET) * total <= len(method.params)


def test_gradients_reach_only_the_pruned_branch(tiny_bert, make_batch):
    method = _sdp(tiny_bert)
    method.on_step_start(4)  # some weights pruned already
    loss, logs = method.loss(method.student, make_batch(torch.Generator().manual_seed(0), size=8))
    assert logs["self_loss"] > 0
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in method.teacher.parameters())
    assert all(p.grad is not None for p in method.student.parameters() if p.requires_grad)
    # The distillation term alone moves the student too (it is not just the task loss).
    method.student.zero_grad()
    method.beta = 0.0
    task_only, _ = method.loss(method.student, make_batch(torch.Generator().manual_seed(0), size=8))
    assert float(loss.detach()) != pytest.approx(float(task_only.detach()))


def test_identical_teacher_and_student_give_a_small_self_loss(tiny_bert, make_batch):
    method = _sdp(tiny_bert, representation="logits", self_loss="mse_logits")
    method.student.eval()  # no dropout: the two branches are the same function
    _, logs = method.loss(method.student, make_batch(torch.Generator().manual_seed(0), size=8))
    assert logs["self_loss"] == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("representation", ["cls", "pooled", "logits", "all_layers"])
@pytest.mark.parametrize("self_loss", ["cross_correlation", "kl_logits", "mse_logits", "cosine"])
def test_every_representation_and_self_loss_trains(tiny_bert, make_batch, representation, self_loss):
    method = _sdp(tiny_bert, representation=representation, self_loss=self_loss)
    method.on_step_start(2)
    loss, logs = method.loss(method.student, make_batch(torch.Generator().manual_seed(0), size=8))
    loss.backward()
    assert torch.isfinite(loss) and logs["self_loss"] >= 0
    grads = [p.grad for p in method.student.bert.encoder.parameters()]
    assert all(g is not None for g in grads)


def test_bad_options_raise(tiny_bert):
    for bad in ({"representation": "mean"}, {"self_loss": "l1"}, {"teacher_mode": "ema"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            _sdp(tiny_bert, **bad)
    student = tiny_bert()
    with pytest.raises(ValueError, match="copy"):
        SelfDistilled(student, teacher=student, final_sparsity=0.5, total_steps=10)


def test_shared_teacher_is_the_unmasked_student_and_masks_come_back(tiny_bert, make_batch):
    method = _sdp(tiny_bert, teacher_mode="shared")
    assert method.teacher is None
    dense_before = {n: w.detach().clone() for n, w in method.params.items()}
    method.on_step_start(4)  # prune: the pruned values are kept aside
    masked = {n: w.detach().clone() for n, w in method.params.items()}
    for n, mask in method.masks.items():
        assert torch.equal(method.lifted[n][~mask], dense_before[n][~mask])
        assert bool((method.lifted[n][mask] == 0).all()) and bool((masked[n][~mask] == 0).all())

    # The teacher's view equals a dense copy with the values as they were before pruning.
    reference = copy.deepcopy(method.student).eval()
    with torch.no_grad():
        for n, p in reference.named_parameters():
            if n in dense_before:
                p.copy_(dense_before[n])
    batch = make_batch(torch.Generator().manual_seed(0), size=8)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    method.student.train()
    with method.masks_lifted() as unpruned:
        assert not unpruned.training and not torch.is_grad_enabled()
        lifted_logits = unpruned(**inputs).logits
    assert method.student.training
    assert torch.allclose(lifted_logits, reference(**inputs).logits, atol=1e-6)
    for n, w in method.params.items():
        assert torch.equal(w.detach(), masked[n])  # restored exactly, zeros included

    # The masks come back even when the teacher's forward fails.
    with pytest.raises(RuntimeError, match="boom"):
        with method.masks_lifted():
            raise RuntimeError("boom")
    assert all(torch.equal(w.detach(), masked[n]) for n, w in method.params.items())

    # And a loss + backward works after the in-place lift (no autograd version error).
    loss, _ = method.loss(method.student, batch)
    loss.backward()
    assert all(torch.equal(w.detach(), masked[n]) for n, w in method.params.items())


@pytest.mark.parametrize("teacher_mode", ["frozen", "shared"])
def test_state_round_trips_through_safetensors(tiny_bert, make_batch, tmp_path, teacher_mode):
    method = _sdp(tiny_bert, teacher_mode=teacher_mode)
    _train(method, "adamw", make_batch, 7, check=False)
    save_file(method.state_dict(), str(tmp_path / "method.safetensors"))
    fresh = _sdp(lambda: tiny_bert(seed=7), teacher_mode=teacher_mode)
    fresh.load_state_dict(load_file(str(tmp_path / "method.safetensors")))
    assert fresh.step == method.step == 6
    for name, mask in method.masks.items():
        assert torch.equal(fresh.masks[name], mask)
        assert bool((fresh.params[name].detach()[~mask] == 0).all())
        if teacher_mode == "shared":
            assert torch.equal(fresh.lifted[name], method.lifted[name])
    assert fresh.recovery.records == method.recovery.records


def test_shared_state_without_lifted_values_is_refused(tiny_bert):
    frozen = _sdp(tiny_bert).state_dict()
    with pytest.raises(ValueError, match="kept-aside"):
        _sdp(tiny_bert, teacher_mode="shared").load_state_dict(frozen)


def test_build_method_passes_options(tiny_bert):
    method = build_method("sdp", tiny_bert(), teacher=tiny_bert(seed=1), total_steps=30,
                          final_sparsity=0.5, options={"beta": 0.5, "representation": "pooled"})
    assert isinstance(method, SelfDistilled)
    assert method.beta == 0.5 and method.representation == "pooled"
    assert method.schedule.end_step == 20


def test_recovery_is_recorded_around_mask_updates(tiny_bert, make_batch):
    method = _sdp(tiny_bert, recovery_steps=1)
    _train(method, "adamw", make_batch, TOTAL_STEPS, check=False)
    records = method.recovery.records
    assert [r["step"] for r in records] == [2, 4, 6, 8]  # step 0 prunes nothing
    assert all(len(r["after"]) == 2 for r in records)


def test_kl_self_loss_on_a_regression_head_still_pulls_the_logits_together(tiny_bert, make_batch):
    def regression() -> torch.nn.Module:
        model = tiny_bert()
        model.config.num_labels = 1
        model.classifier = torch.nn.Linear(model.config.hidden_size, 1)
        return model

    method = _sdp(regression, self_loss="kl_logits")
    with torch.no_grad():  # the teacher's head now differs: a softmax over one logit would hide it
        method.teacher.classifier.bias.add_(3.0)
    batch = make_batch(torch.Generator().manual_seed(0), size=8, length=6)
    batch["labels"] = batch["labels"].float()
    student_out = method.student.eval()(**{k: v for k, v in batch.items() if k != "labels"})
    teacher_out = method.teacher(**{k: v for k, v in batch.items() if k != "labels"})
    distil = method.distill_loss(student_out, [], teacher_out, [])
    assert float(distil.detach()) == pytest.approx(9.0, rel=0.05)


def _teacher_cls(method: SelfDistilled, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        return method.teacher(**inputs, output_hidden_states=True).hidden_states[-1][:, 0]  # [N, H]


def test_the_default_self_loss_has_the_teacher_as_its_fixed_point(tiny_bert, make_batch):
    # N = 8 examples of d = 32 features: C has rank <= 7, as N = 32 and d = 384 for MiniLM.
    method = _sdp(tiny_bert)
    z_t = _teacher_cls(method, make_batch(torch.Generator().manual_seed(0), size=8))

    def gradient(z_s: torch.Tensor) -> torch.Tensor:
        z_s = z_s.clone().requires_grad_()
        (grad,) = torch.autograd.grad(method.distill_loss(None, [z_s], None, [z_t]), z_s)
        return grad

    at_teacher = gradient(z_t)
    away = gradient(z_t + 0.3 * torch.randn(z_t.shape, generator=torch.Generator().manual_seed(1)))
    assert float(away.norm()) > 0
    assert float(at_teacher.norm()) <= 1e-4 * float(away.norm())
    assert float(method.distill_loss(None, [z_t], None, [z_t])) == pytest.approx(0.0, abs=1e-8)


def test_the_identity_target_pushes_the_student_away_from_the_teacher(tiny_bert, make_batch):
    method = _sdp(tiny_bert, cc_target="identity")  # Barlow Twins, as the paper
    z_t = _teacher_cls(method, make_batch(torch.Generator().manual_seed(0), size=8))
    z_s = z_t.clone().requires_grad_()
    loss = method.distill_loss(None, [z_s], None, [z_t])
    (grad,) = torch.autograd.grad(loss, z_s)
    # rank(C) <= N - 1, so sum_ij C_ij^2 >= d^2 / (N - 1): a floor, and a decorrelating push.
    n, d = z_t.shape
    assert float(loss.detach()) >= method.cc_lambda * (d * d / (n - 1) - d) > 0.5
    assert float(grad.norm()) > 1e-3


def test_cross_correlation_parts_are_logged_and_add_up(tiny_bert, make_batch):
    for target in ("identity", "teacher"):
        method = _sdp(tiny_bert, cc_target=target)
        method.on_step_start(4)
        _, logs = method.loss(method.student, make_batch(torch.Generator().manual_seed(0), size=8))
        assert logs["cc_on_diag"] > 0 and logs["cc_off_diag"] > 0
        assert logs["cc_on_diag"] + logs["cc_off_diag"] == pytest.approx(logs["self_loss"], rel=1e-5)
    _, logs = _sdp(tiny_bert, self_loss="cosine").loss(
        tiny_bert(), make_batch(torch.Generator().manual_seed(0), size=8))
    assert "cc_on_diag" not in logs


def test_queued_features_of_earlier_batches_join_the_correlation(tiny_bert, make_batch):
    from pruning import losses

    method = _sdp(tiny_bert, cc_queue=12, cc_target="identity")
    method.student.eval()  # no dropout: the student's features are a function of the batch
    generator = torch.Generator().manual_seed(0)
    batches = [make_batch(generator, size=8) for _ in range(3)]
    for batch in batches[:2]:
        method.loss(method.student, batch)
    student_q, teacher_q = method.queued[0]
    assert student_q.shape == teacher_q.shape == (12, 32) and not student_q.requires_grad
    inputs = {k: v for k, v in batches[2].items() if k != "labels"}
    z_s = method.student(**inputs, output_hidden_states=True).hidden_states[-1][:, 0]
    z_t = _teacher_cls(method, batches[2])
    expected = losses.cross_correlation_loss(torch.cat([student_q, z_s]), torch.cat([teacher_q, z_t]),
                                             method.cc_lambda)
    loss, logs = method.loss(method.student, batches[2])
    assert logs["self_loss"] == pytest.approx(float(expected.detach()), rel=1e-4)
    loss.backward()  # only this batch carries gradient; the queue now ends with it
    assert torch.allclose(method.queued[0][0][-8:], z_s.detach(), atol=1e-6)


def test_queue_survives_a_checkpoint(tiny_bert, make_batch, tmp_path):
    method = _sdp(tiny_bert, cc_queue=12)
    _train(method, "adamw", make_batch, 3, check=False)
    save_file(method.state_dict(), str(tmp_path / "method.safetensors"))
    fresh = _sdp(lambda: tiny_bert(seed=7), cc_queue=12)
    fresh.load_state_dict(load_file(str(tmp_path / "method.safetensors")))
    for (s, t), (fs, ft) in zip(method.queued, fresh.queued):
        assert torch.equal(s, fs) and torch.equal(t, ft)


def test_bad_cross_correlation_options_raise(tiny_bert):
    with pytest.raises(ValueError, match="cc_target"):
        _sdp(tiny_bert, cc_target="zero")
    with pytest.raises(ValueError, match="cc_queue"):
        _sdp(tiny_bert, cc_queue=-1)
