"""The interface every pruning method implements, and the shared mask bookkeeping.

The training loop (infra/train/loop.py, run by the Ray Train workers with DDP and by the
benchmarks) only ever calls the `PruningMethod` hooks, so a new method never changes
the loop:

    model = DDP(method.module)              # what the optimizer trains; the student by default
    for step in range(start, total_steps):
        method.on_step_start(step)          # mask updates when the schedule says so
        loss, logs = method.loss(model, batch)
        loss.backward()
        method.mask_gradients()             # pruned entries' gradients to 0: not clipped, not in AdamW
        clip(method.module); optimizer.step(); scheduler.step()
        method.on_step_end(step)            # pruned weights back to exactly 0 (gradients still there)
        optimizer.zero_grad()
        method.reshape(optimizer)           # a method that slices its module does it here
    checkpoints: method.state_dict() / load_state_dict(), method.mask_checksum() compared across ranks
    the end: method.export() is saved, method.recovery (if any) beside it
"""

from __future__ import annotations

import abc
from typing import Literal

import torch
from torch import Tensor, nn

from pruning.analysis import RecoveryTracker
from pruning.masks import (apply_masks, global_keep_masks, local_keep_masks, magnitude_scores,
                           masks_checksum)
from pruning.analysis import RECOVERY_STEPS
from pruning.schedules import END_FRACTION, START_FRACTION, UPDATE_EVERY, CubicSchedule
from pruning.targets import encoder_linear_weights
from pruning.teacher_outputs import TeacherOutputs

# input_ids [B, T], attention_mask [B, T], token_type_ids [B, T] (may be absent), labels [B]
Batch = dict[str, Tensor]
Allocation = Literal["local", "global"]
ALLOCATIONS: tuple[Allocation, ...] = ("local", "global")

_STEP_KEY = "step"
_MASK_PREFIX = "mask."
_RECOVERY_PREFIX = "recovery."


class PruningMethod(abc.ABC):
    """What the training loop calls on a method; see the module docstring.

    A subclass implements `loss`; every other hook has a default that fits a method
    without masks (plain fine-tuning).
    """

    name: str = "custom"  # the registry name (pruning.methods); subclasses set theirs
    student: nn.Module  # the unwrapped model being trained; masks live on it
    # Mask updates and the task loss after each (pruning.analysis); None: not recorded.
    recovery: RecoveryTracker | None = None
    _module: nn.Module | None = None

    def __init__(self, student: nn.Module) -> None:
        self.student = student

    @property
    def module(self) -> nn.Module:
        """What the optimizer trains and DDP wraps: the student, unless a method trains more
        (HomoDistil's hidden-state projections) and sets `self.module` to it."""
        return self.student if self._module is None else self._module

    @module.setter
    def module(self, value: nn.Module) -> None:
        self._module = value

    def on_step_start(self, step: int) -> None:
        """Before the forward pass of optimizer step `step` (0-based steps done so far)."""

    @abc.abstractmethod
    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        """Scalar loss [] and small float logs; `model` is `self.module`, possibly DDP-wrapped."""

    def mask_gradients(self) -> None:
        """After backward(), before the gradient norm is clipped: zero the gradients of what
        the step will throw away (pruned entries), so they neither count in the clipped norm
        nor enter the optimizer's moments. Nothing by default."""

    def on_step_end(self, step: int) -> None:
        """After optimizer.step(), before zero_grad(): undo what the optimizer did to pruned
        weights; gradients are still there for scores that read them."""

    def reshape(self, optimizer: torch.optim.Optimizer) -> bool:
        """After zero_grad(): a method that cuts pruned groups out of its module (HomoDistil)
        does it here, in place, and cuts `optimizer`'s state with the parameters (the same
        Parameter objects, so the optimizer trains on). True when shapes changed; none by
        default. A method must not reshape a module that a DDP wrapper holds."""
        return False

    def state_dict(self) -> dict[str, Tensor]:
        """Everything needed to resume beyond the module and optimizer, tensors only
        (safetensors-compatible); none by default."""
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore what `state_dict` returned."""
        if state:
            raise ValueError(f"{self.name} keeps no state, got keys {sorted(state)}")

    def target_sparsity(self) -> float:
        """The final encoder sparsity this method aims for; 0 for a method that does not prune."""
        return 0.0

    def export(self) -> nn.Module:
        """The model to save when training ends: the student, or a sliced copy of it."""
        return self.student

    def mask_checksum(self) -> int | None:
        """A 63-bit digest of the masks, equal on every DDP rank; None: the method has no masks."""
        return None

    def teacher_outputs_spec(self) -> TeacherOutputs | None:
        """What `loss` reads of a frozen teacher per example, so the job may compute it once
        (`teacher_outputs`) and pass it in the batch as "teacher.<name>" keys
        (pruning.teacher_outputs); None (the default): nothing to precompute."""
        return None

    def teacher_outputs(self, inputs: Batch) -> dict[str, Tensor]:
        """The frozen teacher's outputs on `inputs` (no labels), name -> [B, ...], as `loss`
        reads them; implemented by the methods whose `teacher_outputs_spec` is not None."""
        raise NotImplementedError(f"{self.name} has no frozen-teacher outputs to precompute")


def task_loss(model: nn.Module, batch: Batch) -> Tensor:
    """The task loss transformers computes when `labels` is in the batch.

    Cross-entropy for classification, MSE for regression (num_labels=1). Calling
    `model(**batch)` (not `model.module`) keeps DDP's gradient sync.
    """
    if "labels" not in batch:
        raise ValueError(f"batch has no 'labels' (keys: {sorted(batch)}); the task loss needs them")
    loss = model(**batch).loss
    if loss is None:
        raise ValueError(
            f"{type(model).__name__} returned no loss; use a *ForSequenceClassification model"
        )
    return loss


class MaskedMethod(PruningMethod):
    """Unstructured masks on the encoder linear weights, updated on a CubicSchedule.

    Subclasses add `loss` (and may override `importance_scores`); the schedule,
    the masks, their monotone updates, re-application after every optimizer step
    and checkpointing live here. So does the recovery curve (pruning.analysis):
    a subclass's `loss` reports its task loss with `self.recovery.observe(self.step,
    value)`, and every mask update that prunes more opens a record of `recovery_steps`
    + 1 losses.
    """

    name: str = "masked"

    def __init__(
        self,
        student: nn.Module,
        *,
        final_sparsity: float,
        total_steps: int,
        start_fraction: float = START_FRACTION,
        end_fraction: float = END_FRACTION,
        update_every: int = UPDATE_EVERY,
        allocation: Allocation = "local",
        recovery_steps: int = RECOVERY_STEPS,
    ) -> None:
        """The schedule options of every masked method (a subclass takes them as `**schedule`;
        the registry lists them among its options): sparsity ramps cubically from 0 at
        `start_fraction` of the run's `total_steps` to `final_sparsity` at `end_fraction`
        of it, masks recomputed every `update_every` steps, then fixed-mask recovery;
        `allocation` = "local" ranks each matrix on its own, "global" all against one
        threshold; `recovery_steps`: steps recorded after each mask update for the recovery
        curve (pruning.analysis.RecoveryTracker)."""
        if allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {allocation!r}")
        self.student = student
        self.schedule = CubicSchedule.over_run(total_steps, final_sparsity, start_fraction=start_fraction,
                                               end_fraction=end_fraction, update_every=update_every)
        self.allocation: Allocation = allocation
        self.params = self.masked_weights(student)
        self.masks: dict[str, Tensor] = {
            name: torch.ones_like(w, dtype=torch.bool) for name, w in self.params.items()
        }
        self.step = 0
        self.recovery = RecoveryTracker(recovery_steps)

    def masked_weights(self, student: nn.Module) -> dict[str, nn.Parameter]:
        """name -> the weights this method masks: the encoder's linear weights by default."""
        return encoder_linear_weights(student)

    def importance_scores(self) -> dict[str, Tensor]:
        """name -> score [*] for each masked weight; magnitude of w * mask by default."""
        return {name: magnitude_scores(w) for name, w in self.params.items()}

    def update_masks(self, step: int) -> None:
        """Prune to the scheduled sparsity at `step`; pruned entries never regrow."""
        select = global_keep_masks if self.allocation == "global" else local_keep_masks
        sparsity = self.schedule.sparsity_at(step)
        self._follow_params()
        kept_before = sum(int(m.sum()) for m in self.masks.values())
        self.masks = select(self.importance_scores(), sparsity, previous=self.masks)
        apply_masks(self.params, self.masks)
        if sum(int(m.sum()) for m in self.masks.values()) < kept_before:
            self.recovery.mark_update(step, sparsity)

    def _follow_params(self) -> None:
        # The loop may move the student (Ray's prepare_model) after the method is built;
        # nn.Module.to keeps the Parameter objects, so only the masks need to follow.
        for name, w in self.params.items():
            if self.masks[name].device != w.device:
                self.masks[name] = self.masks[name].to(w.device)

    def on_step_start(self, step: int) -> None:
        """Record the step; prune further if the schedule updates masks at it."""
        self.step = step
        if self.schedule.is_update_step(step):
            self.update_masks(step)

    @abc.abstractmethod
    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        """Scalar loss and small float logs."""

    def mask_gradients(self) -> None:
        """Zero the gradients of pruned entries (in place). At 90% sparsity most of the
        gradient norm can sit on entries the step discards: left in, they would shrink the
        clipped update of the kept ones, and AdamW's moments of pruned entries would not
        stay 0. An entry pruned mid-run keeps its old moments, decaying; the weight itself
        is zeroed after every step, so they never reach the model."""
        self._follow_params()
        for name, w in self.params.items():
            if w.grad is not None:
                w.grad.mul_(self.masks[name])

    def on_step_end(self, step: int) -> None:
        """Zero pruned weights again: weight decay and momentum move them off zero."""
        self._follow_params()
        apply_masks(self.params, self.masks)

    def target_sparsity(self) -> float:
        """The schedule's final sparsity of the encoder linear weights."""
        return self.schedule.final_sparsity

    def mask_checksum(self) -> int:
        """A 63-bit digest of every mask, in parameter order; equal on every DDP rank."""
        return masks_checksum(self.masks)

    def state_dict(self) -> dict[str, Tensor]:
        """{"step": int64 [], "mask.<param name>": bool [*] on CPU, "recovery.*": float64}."""
        state = {_STEP_KEY: torch.tensor(self.step, dtype=torch.int64)}
        for name, mask in self.masks.items():
            state[_MASK_PREFIX + name] = mask.detach().to("cpu", torch.bool).contiguous()
        for key, value in self.recovery.state_dict().items():
            state[_RECOVERY_PREFIX + key] = value.contiguous()
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore masks and step from `state_dict()` and apply the masks to the student.

        The recovery records are optional (checkpoints written before they existed).
        """
        recovery = {k[len(_RECOVERY_PREFIX):]: v for k, v in state.items()
                    if k.startswith(_RECOVERY_PREFIX)}
        state = {k: v for k, v in state.items() if not k.startswith(_RECOVERY_PREFIX)}
        expected = {_MASK_PREFIX + name for name in self.params} | {_STEP_KEY}
        if set(state) != expected:
            missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(
                f"{self.name} state does not fit this student: missing {missing}, "
                f"unexpected {unexpected}"
            )
        masks = {}
        for name, w in self.params.items():
            mask = state[_MASK_PREFIX + name]
            if mask.shape != w.shape:
                raise ValueError(
                    f"mask {name} has shape {tuple(mask.shape)}, weight {tuple(w.shape)}"
                )
            masks[name] = mask.to(w.device, torch.bool)
        self.masks = masks
        self.step = int(state[_STEP_KEY])
        if recovery:
            self.recovery.load_state_dict(recovery)
        apply_masks(self.params, self.masks)
