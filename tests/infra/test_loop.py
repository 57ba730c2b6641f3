"""The one training step and fit loop (infra.train.loop), on the tiny BERT of tests/tiny.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from torch import Tensor, nn
from transformers import get_linear_schedule_with_warmup

from infra import data
from infra.experiment.config import DistilSpec, PruneSpec
from infra.train import checkpoints, loop
from pruning.methods import PruningMethod, build_method
from pruning.methods.base import Batch, task_loss
from pruning.schedules import CubicSchedule
from tests.tiny import VOCAB, make_tiny_bert as tiny_bert

STEPS = 12


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models only lose to thread overhead on a shared machine
    yield
    torch.set_num_threads(threads)


def batch_at(step: int) -> Batch:
    g = torch.Generator().manual_seed(step)
    return {"input_ids": torch.randint(0, VOCAB, (4, 8), generator=g),
            "attention_mask": torch.ones(4, 8, dtype=torch.long),
            "labels": torch.randint(0, 2, (4,), generator=g)}


class TaskOnly(PruningMethod):
    """A method that implements nothing but `loss`: every other hook is the base's default."""

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        loss = task_loss(model, batch)
        return loss, {"task_loss": float(loss.detach())}


class Scaled(TaskOnly):
    """The task loss times `factor`: NaN or huge losses on demand."""

    def __init__(self, student: nn.Module, factor: float) -> None:
        super().__init__(student)
        self.factor = factor

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        loss, logs = super().loss(model, batch)
        return loss * self.factor, logs


def make_training(method: PruningMethod, *, lr: float = 1e-3, constant: bool = False):
    """AdamW with a linear schedule (warm-up 20%), or a constant rate from the first step."""
    optimizer = loop.make_optimizer(method.module, learning_rate=lr, weight_decay=0.01)
    scheduler = loop.make_scheduler(optimizer, total_steps=STEPS, warmup_fraction=0.0 if constant else 0.2,
                                    schedule="constant" if constant else "linear")
    return optimizer, scheduler


def rates(scheduler, steps: int) -> list[float]:
    """The rate each of `steps` optimizer steps trains with."""
    seen = []
    for _ in range(steps):
        seen.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return seen


def test_the_linear_schedule_is_transformers_to_the_bit() -> None:
    for total, warmup in ((31, 0.06), (100, 0.1), (7, 0.0)):
        ours = loop.make_scheduler(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=5e-5),
                                   total_steps=total, warmup_fraction=warmup)
        theirs = get_linear_schedule_with_warmup(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=5e-5),
                                                 int(warmup * total), total)
        assert rates(ours, total + 2) == rates(theirs, total + 2)


@pytest.mark.parametrize("schedule", loop.LR_SCHEDULES)
def test_each_schedule_warms_up_then_keeps_to_its_floor(schedule: str) -> None:
    total, warmup, floor = 100, 10, 0.2
    at = [loop.lr_multiplier(s, total_steps=total, warmup_steps=warmup, schedule=schedule,
                             min_lr_fraction=floor) for s in range(total)]
    assert at[0] == 0.0 and at[5] == pytest.approx(0.5) and at[warmup] == 1.0
    assert all(a >= b for a, b in zip(at[warmup:], at[warmup + 1:]))  # never rises after the warm-up
    assert min(at[warmup:]) >= floor
    if schedule == "constant":
        assert set(at[warmup:]) == {1.0}
    else:  # linear: the middle of the decay is halfway to the floor; cosine: too, by symmetry
        assert at[55] == pytest.approx(floor + (1 - floor) * 0.5, abs=0.01)
        assert at[-1] < floor + 0.05
    with pytest.raises(ValueError, match="lr schedule"):
        loop.make_scheduler(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), total_steps=10,
                            warmup_fraction=0.0, schedule="step")


def test_the_schedule_resumes_from_a_json_checkpoint() -> None:
    def fresh():
        return loop.make_scheduler(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), total_steps=20,
                                   warmup_fraction=0.1, schedule="cosine", min_lr_fraction=0.1)

    straight, first = fresh(), fresh()
    expected = rates(straight, 20)
    rates(first, 8)
    state = json.loads(json.dumps(first.state_dict()))  # checkpoints keep it as JSON
    second = fresh()
    second.load_state_dict(state)
    assert rates(second, 12) == expected[8:]


@pytest.mark.parametrize("spec", [PruneSpec(), DistilSpec().train], ids=["prune", "distil"])
@pytest.mark.parametrize("total", [31, 250, 3000])  # the demo's pruning job (0.5 epoch), longer ones
def test_the_default_pruning_recipe_leaves_a_third_of_its_rate_to_recovery(total: int, spec) -> None:
    """After the last mask (or width) update, training recovers under fixed masks; linear decay
    to 0 over the run (the recipe before issue 14) left that phase about 11% of the run's rate
    mass. The same holds for HomoDistil's task-agnostic stage, whose widths stop at 2/3 too."""
    schedule = CubicSchedule.over_run(total, 0.9, update_every=4)
    last_update = max(s for s in range(total) if schedule.is_update_step(s))
    shape = dict(total_steps=total, warmup_steps=int(spec.warmup_fraction * total))
    recovery = loop.lr_mass_after(last_update, schedule=spec.lr_schedule,
                                  min_lr_fraction=spec.min_lr_fraction, **shape)
    before = loop.lr_mass_after(last_update, schedule="linear", min_lr_fraction=0.0, **shape)
    assert recovery >= 0.30
    assert before < 0.15
    assert loop.lr_mass_after(0, schedule="linear", **shape) == pytest.approx(1.0)


def test_total_steps_round_up_and_never_reach_zero() -> None:
    assert loop.total_steps(2.5, 5) == 13
    assert loop.total_steps(1.0, 8) == 8
    assert loop.total_steps(0.01, 3) == 1


def test_biases_and_layernorm_weights_are_not_decayed() -> None:
    model = tiny_bert()
    decay, no_decay = loop.param_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 2 and "LayerNorm" not in names[id(p)] for p in decay["params"])
    assert any("LayerNorm.weight" in names[id(p)] for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_pruned_weights_stay_zero_after_a_step() -> None:
    model = tiny_bert()
    method = build_method("gmp", model, total_steps=STEPS, final_sparsity=0.6, options={"update_every": 2})
    method.update_masks(method.schedule.end_step)  # final masks in place before the step
    optimizer, scheduler = make_training(method, lr=1e-1, constant=True)  # AdamW moves every weight
    before = {n: w.detach().clone() for n, w in method.params.items()}
    loop.train_step(method, model, batch_at(0), optimizer, scheduler, step=STEPS, max_grad_norm=1.0)
    for name, w in method.params.items():
        mask = method.masks[name]
        assert torch.all(w[~mask] == 0), name
        assert not torch.equal(w[mask], before[name][mask]), name  # the kept weights did train
    assert method.mask_checksum() is not None


def test_a_non_finite_loss_stops_the_job_by_name_before_any_update() -> None:
    model = tiny_bert()
    method = Scaled(model, factor=math.nan)
    optimizer, scheduler = make_training(method)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(loop.NonFiniteLossError, match=r"job abc123: loss is nan at step 7 .*learning rate"):
        loop.train_step(method, model, batch_at(0), optimizer, scheduler, step=7, max_grad_norm=1.0,
                        job="abc123")
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_the_gradient_norm_is_clipped() -> None:
    model = tiny_bert()
    method = Scaled(model, factor=1e4)  # a gradient norm far above the clip
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)  # plain SGD: the update is the gradient
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    loop.train_step(method, model, batch_at(0), optimizer, None, step=0, max_grad_norm=0.5)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert float((after - before).norm()) == pytest.approx(0.5, rel=1e-4)


def pruned_gmp(model: nn.Module) -> PruningMethod:
    """GMP at 90% with its final masks in place before any step."""
    method = build_method("gmp", model, total_steps=STEPS, final_sparsity=0.9, options={"update_every": 2})
    method.update_masks(method.schedule.end_step)
    return method


def test_clipping_counts_only_the_gradients_of_kept_entries() -> None:
    model = tiny_bert()
    method = pruned_gmp(model)
    scaled = Scaled(model, factor=1e4)  # the same model, a gradient norm far above the clip
    scaled.mask_gradients, scaled.on_step_end = method.mask_gradients, method.on_step_end
    trained = list(method.params.values())  # the masked matrices only: theirs is the whole norm
    for param in model.parameters():
        param.requires_grad_(any(param is w for w in trained))
    optimizer = torch.optim.SGD(trained, lr=1.0)  # plain SGD: the update is the gradient
    before = torch.cat([w.detach().flatten().clone() for w in trained])
    loop.train_step(scaled, model, batch_at(0), optimizer, None, step=STEPS, max_grad_norm=0.5)
    after = torch.cat([w.detach().flatten() for w in trained])
    # The pruned entries' gradients are thrown away, so the whole clipped norm reaches the kept
    # ones; clipped over every entry, the kept ones would get only a part of it (~1/3 here).
    assert float((after - before).norm()) == pytest.approx(0.5, rel=1e-4)
    assert all(torch.all(w[~method.masks[n]] == 0) for n, w in method.params.items())


def test_adamw_moments_of_pruned_entries_stay_zero() -> None:
    model = tiny_bert()
    method = pruned_gmp(model)
    optimizer, scheduler = make_training(method, lr=1e-2, constant=True)
    loop.fit(method, model, (batch_at(s) for s in range(3)), steps=3, optimizer=optimizer,
             scheduler=scheduler, max_grad_norm=1.0, start=0)
    for name, w in method.params.items():
        state, pruned = optimizer.state[w], ~method.masks[name]
        assert pruned.float().mean() > 0.85, name
        assert torch.all(state["exp_avg"][pruned] == 0), name
        assert torch.all(state["exp_avg_sq"][pruned] == 0), name
        assert torch.any(state["exp_avg"][~pruned] != 0), name  # the kept entries did train


def test_the_base_method_leaves_gradients_alone() -> None:
    model = tiny_bert()
    method = TaskOnly(model)
    task_loss(model, batch_at(0)).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    method.mask_gradients()
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))


def test_a_step_calls_the_hooks_in_the_workers_order() -> None:
    seen: list[str] = []

    class Recording(TaskOnly):
        def on_step_start(self, step: int) -> None:
            seen.append(f"start {step}")

        def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
            seen.append("loss")
            return super().loss(model, batch)

        def on_step_end(self, step: int) -> None:
            # After optimizer.step() and scheduler.step(), before zero_grad: gradients are there.
            has_grads = all(p.grad is not None for p in self.student.parameters() if p.requires_grad)
            seen.append(f"end {step} grads={has_grads} lr={scheduler.get_last_lr()[0]:.2e}")

    model = tiny_bert()
    method = Recording(model)
    optimizer, scheduler = make_training(method)  # warm-up: the rate after step 0 is 1/2 of 1e-3
    loop.train_step(method, model, batch_at(0), optimizer, scheduler, step=0, max_grad_norm=1.0)
    assert seen == ["start 0", "loss", "end 0 grads=True lr=5.00e-04"]
    assert all(p.grad is None for p in model.parameters())


def test_bf16_runs_the_forward_in_bf16_and_keeps_weights_and_moments_in_fp32() -> None:
    seen: dict[str, torch.dtype] = {}

    class Recording(TaskOnly):
        def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
            out = model(**batch)
            seen["logits"], seen["loss"] = out.logits.dtype, out.loss.dtype
            return out.loss, {}

    model = tiny_bert()
    method = Recording(model)
    optimizer, scheduler = make_training(method, constant=True)
    before = [p.detach().clone() for p in model.parameters()]
    loop.train_step(method, model, batch_at(0), optimizer, scheduler, step=0, max_grad_norm=1.0,
                    precision="bf16")
    assert seen == {"logits": torch.bfloat16, "loss": torch.float32}  # cross-entropy stays fp32
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(s["exp_avg"].dtype == torch.float32 for s in optimizer.state.values())
    assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before))
    loop.train_step(method, model, batch_at(0), optimizer, scheduler, step=1, max_grad_norm=1.0)
    assert seen["logits"] == torch.float32  # fp32, the default: no autocast


def test_bf16_training_lowers_the_loss_like_fp32() -> None:
    final = {}
    for precision in loop.PRECISIONS:
        model = tiny_bert()
        method = TaskOnly(model)
        optimizer, scheduler = make_training(method, lr=1e-3, constant=True)
        losses: list[float] = []
        loop.fit(method, model, (batch_at(0) for _ in range(30)), steps=30, optimizer=optimizer,
                 scheduler=scheduler, max_grad_norm=1.0, precision=precision,
                 on_step=lambda s, loss, logs: losses.append(loss.item()))
        final[precision] = losses[-1]
        assert losses[-1] < 0.5 * losses[0], precision
    assert final["bf16"] == pytest.approx(final["fp32"], abs=0.1)


def test_bf16_falls_back_to_fp32_with_one_line_where_it_is_not_native(monkeypatch, caplog) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setattr(loop, "bf16_supported", lambda device: False)
    with caplog.at_level("WARNING", logger=loop.__name__):
        assert loop.resolve_precision("bf16", cpu) == "fp32"
        assert loop.resolve_precision("fp32", cpu) == "fp32"
    assert len(caplog.records) == 1 and "training in fp32" in caplog.records[0].getMessage()
    monkeypatch.setattr(loop, "bf16_supported", lambda device: True)
    assert loop.resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ValueError, match="precision must be one of"):
        loop.resolve_precision("fp16", cpu)
    assert isinstance(loop.bf16_supported(cpu), bool)  # this CPU's answer, whichever it is


def build(name: str, model: nn.Module) -> PruningMethod:
    return build_method(name, model, teacher=tiny_bert(1), total_steps=STEPS,
                        final_sparsity=0.0 if name == "dense" else 0.6,
                        options={"update_every": 2} if name != "dense" else {})


def _reference_run(name: str) -> tuple[list[float], list[Tensor]]:
    """The worker's loop as it was written out before infra.train.loop existed (plus the
    gradient masking before the clip, issue 14)."""
    model = tiny_bert()
    method = build(name, model)
    optimizer, scheduler = make_training(method)
    torch.manual_seed(0)
    model.train()
    losses = []
    for step in range(STEPS):
        method.on_step_start(step)
        loss, _ = method.loss(model, batch_at(step))
        loss.backward()
        method.mask_gradients()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        method.on_step_end(step)
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("name", ["dense", "gmp", "sdp"])
def test_fit_matches_the_workers_loop_bit_for_bit(name: str) -> None:
    expected_losses, expected_weights = _reference_run(name)
    model = tiny_bert()
    method = build(name, model)
    optimizer, scheduler = make_training(method)
    losses, steps_seen = [], []

    def on_step(step: int, loss: Tensor, logs: dict[str, float]) -> None:
        steps_seen.append(step)
        losses.append(loss.item())

    torch.manual_seed(0)
    done = loop.fit(method, method.module, (batch_at(s) for s in range(100)), steps=STEPS,
                    optimizer=optimizer, scheduler=scheduler, max_grad_norm=1.0, on_step=on_step)
    assert done == STEPS and steps_seen == list(range(1, STEPS + 1))
    assert losses == expected_losses
    assert all(torch.equal(p, e) for p, e in zip(model.parameters(), expected_weights))


def test_fit_lowers_the_loss_on_a_repeated_batch() -> None:
    model = tiny_bert()
    method = TaskOnly(model)
    optimizer, scheduler = make_training(method, lr=1e-3, constant=True)
    losses: list[float] = []
    loop.fit(method, model, (batch_at(0) for _ in range(30)), steps=30, optimizer=optimizer,
             scheduler=scheduler, max_grad_norm=1.0, on_step=lambda s, loss, logs: losses.append(loss.item()))
    assert len(losses) == 30 and losses[-1] < 0.5 * losses[0]


def test_fit_from_a_finished_run_takes_no_step_and_a_short_stream_ends_early() -> None:
    model = tiny_bert()
    method = TaskOnly(model)
    optimizer, scheduler = make_training(method)
    kwargs = dict(optimizer=optimizer, scheduler=scheduler, max_grad_norm=1.0)
    assert loop.fit(method, model, iter([batch_at(0)]), steps=STEPS, start=STEPS, **kwargs) == STEPS
    assert scheduler.last_epoch == 0  # nothing stepped
    assert loop.fit(method, model, iter([batch_at(0), batch_at(1)]), steps=STEPS, start=3, **kwargs) == 5


def test_a_resumed_stream_continues_at_the_exact_batch() -> None:
    rng = np.random.default_rng(0)
    table = pa.table({"input_ids": pa.array([list(rng.integers(2, VOCAB, 6)) for _ in range(10)],
                                            pa.list_(pa.int64())),
                      "label": pa.array(rng.integers(0, 2, 10))})
    per_epoch = data.num_batches(table, 3, drop_last=True)  # 3 batches, 1 example left out

    def epoch(e: int):
        return data.batches(table, 3, shuffle=True, seed=0, epoch=e, drop_last=True)

    def first(n: int, start: int) -> list[list[int]]:
        stream = loop.stream_epochs(epoch, start=start, batches_per_epoch=per_epoch)
        return [next(stream)["input_ids"][:, 0].tolist() for _ in range(n)]

    straight = first(8, start=0)
    assert first(4, start=4) == straight[4:]  # epoch 1, its second batch on
    assert straight[:3] != straight[3:6]  # each epoch reshuffles
    with pytest.raises(ValueError, match="at least one batch"):
        next(loop.stream_epochs(epoch, start=0, batches_per_epoch=0))


def test_a_method_that_only_implements_loss_satisfies_the_loop(tmp_path: Path) -> None:
    model = tiny_bert()
    method = TaskOnly(model)
    assert method.module is model and method.export() is model
    assert method.mask_checksum() is None and method.recovery is None
    assert method.target_sparsity() == 0.0 and method.state_dict() == {}
    optimizer, scheduler = make_training(method)
    loop.fit(method, method.module, (batch_at(s) for s in range(3)), steps=3, optimizer=optimizer,
             scheduler=scheduler, max_grad_norm=1.0)
    where = checkpoints.position(3, 3, 1)
    checkpoints.save(tmp_path, module=method.module, method_state=method.state_dict(), optimizer=optimizer,
                     scheduler=scheduler, where=where)
    fresh = TaskOnly(tiny_bert(5))
    optimizer, scheduler = make_training(fresh)
    checkpoints.load(tmp_path, module=fresh.module, method=fresh, optimizer=optimizer, scheduler=scheduler,
                     batches_per_epoch=3, world_size=1)
    assert all(torch.equal(a, b) for a, b in zip(fresh.student.parameters(), model.parameters()))
    with pytest.raises(ValueError, match="keeps no state"):
        fresh.load_state_dict({"step": torch.tensor(1)})


def test_a_method_without_loss_cannot_be_built() -> None:
    class NoLoss(PruningMethod):
        pass

    with pytest.raises(TypeError, match="loss"):
        NoLoss(tiny_bert())
