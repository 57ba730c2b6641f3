"""Self-distilled pruning (SDP): prune the fine-tuned model while pulling its
representation towards the unpruned model's (METHODS.md section 1)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from pruning import losses, teacher_outputs
from pruning.analysis import RECOVERY_STEPS
from pruning.features import capture_output
from pruning.masks import apply_masks
from pruning.methods.base import Allocation, Batch, MaskedMethod
from pruning.schedules import END_FRACTION, START_FRACTION, UPDATE_EVERY, CubicSchedule
from pruning.teacher_outputs import TeacherOutputs

Representation = Literal["cls", "pooled", "logits", "all_layers"]
SelfLoss = Literal["cross_correlation", "kl_logits", "mse_logits", "cosine"]
TeacherMode = Literal["frozen", "shared"]
REPRESENTATIONS: tuple[Representation, ...] = ("cls", "pooled", "logits", "all_layers")
SELF_LOSSES: tuple[SelfLoss, ...] = ("cross_correlation", "kl_logits", "mse_logits", "cosine")
TEACHER_MODES: tuple[TeacherMode, ...] = ("frozen", "shared")
_LIFTED_PREFIX = "lifted."


class SelfDistilled(MaskedMethod):
    """Magnitude pruning of the fine-tuned model with self-distillation (O'Neill et al.).

    The student starts from the fine-tuned teacher; its unpruned version is the
    teacher. Loss: L = CE(y, f_pruned(x)) + beta * L_cc(z_pruned, z_unpruned), with
    the Barlow Twins cross-correlation L_cc of pruning.losses. Gradients reach only
    the pruned branch: the teacher runs under no_grad.

    Defaults (METHODS.md section 1; the open details are options, defaults named there):
      beta = 1.0 (the paper's grid: 0.1, 0.5, 1.0); cc_lambda = 5.1e-3.
      representation = "cls": last-layer [CLS] hidden state [N, H]. "pooled": the
        pooler output (BERT); "logits"; "all_layers": the [CLS] of every encoder
        layer's output, L_cc summed over layers (embedding output excluded; our choice).
      teacher_mode = "frozen": the loaded fine-tuned model, frozen, in eval mode.
        "shared": the student's own weights without the mask. Pruned weights are
        exact zeros in the student, so each pruned entry's value at the moment it was
        pruned is kept aside and put back for the teacher's forward (no grad, eval
        mode), after which the mask is applied again; the kept weights are shared and
        keep training. The loaded teacher is then not used.
      self_loss = "cross_correlation"; the paper's ablation: "kl_logits" (KL with
        `temperature`, default 1.0, ours), "mse_logits" (both on the logits, whatever
        the representation), "cosine" (1 - cos on the representation). For regression
        (one output) "kl_logits" is MSE of the logits: a softmax over one value is 1.
      Schedule as GMP: cubic from 0 at `start_fraction` to the target at
        `end_fraction` of the run, masks from |w * mask| every `update_every`
        steps, then fixed-mask recovery (defaults: pruning.schedules START_FRACTION,
        END_FRACTION, UPDATE_EVERY); `allocation` = "local" per matrix ("global"
        ranks all matrices together). `recovery_steps` (pruning.analysis
        RECOVERY_STEPS): steps recorded after each mask update for the recovery curve.
    """

    name = "sdp"

    def __init__(
        self,
        student: nn.Module,
        *,
        teacher: nn.Module,
        final_sparsity: float,
        total_steps: int,
        beta: float = 1.0,
        cc_lambda: float = losses.CC_LAMBDA,
        representation: Representation = "cls",
        self_loss: SelfLoss = "cross_correlation",
        teacher_mode: TeacherMode = "frozen",
        temperature: float = 1.0,
        start_fraction: float = START_FRACTION,
        end_fraction: float = END_FRACTION,
        update_every: int = UPDATE_EVERY,
        allocation: Allocation = "local",
        recovery_steps: int = RECOVERY_STEPS,
    ) -> None:
        for value, valid, what in ((representation, REPRESENTATIONS, "representation"),
                                   (self_loss, SELF_LOSSES, "self_loss"),
                                   (teacher_mode, TEACHER_MODES, "teacher_mode")):
            if value not in valid:
                raise ValueError(f"{what} must be one of {valid}, got {value!r}")
        if beta < 0 or temperature <= 0:
            raise ValueError(f"need beta >= 0 and temperature > 0, got {beta}, {temperature}")
        schedule = CubicSchedule.over_run(total_steps, final_sparsity, start_fraction=start_fraction,
                                          end_fraction=end_fraction, update_every=update_every)
        super().__init__(student, schedule=schedule, allocation=allocation,
                         recovery_steps=recovery_steps)
        self.beta, self.cc_lambda, self.temperature = beta, cc_lambda, temperature
        self.representation: Representation = representation
        self.self_loss: SelfLoss = self_loss
        self.teacher_mode: TeacherMode = teacher_mode
        self.teacher: nn.Module | None = None
        self.lifted: dict[str, Tensor] = {}
        if teacher_mode == "frozen":
            if teacher is student:
                raise ValueError("the frozen teacher must be a copy, not the student itself; "
                                 "use teacher_mode='shared' to share weights")
            self.teacher = teacher.eval().requires_grad_(False)
        else:
            self.lifted = {n: torch.zeros_like(w, requires_grad=False) for n, w in self.params.items()}

    # ---------------------------------------------------------- masks and the shared teacher

    def update_masks(self, step: int) -> None:
        """Prune as MaskedMethod does; in shared mode keep the newly pruned values aside."""
        if self.teacher_mode == "frozen":
            super().update_masks(step)
            return
        values = {n: w.detach().clone() for n, w in self.params.items()}
        old = {n: m.clone() for n, m in self.masks.items()}
        super().update_masks(step)
        for n, mask in self.masks.items():
            newly = old[n].to(mask.device) & ~mask
            self.lifted[n] = self.lifted[n].to(mask.device)
            self.lifted[n][newly] = values[n][newly]

    @contextmanager
    def masks_lifted(self) -> Iterator[nn.Module]:
        """The student with its pruned entries put back, in eval mode, without grad.

        Exits with the masks applied again and the training mode restored, even on an
        error. Pruned entries are exact zeros, so adding the kept-aside values (zeros
        at kept entries) restores them exactly.
        """
        was_training = self.student.training
        try:
            with torch.no_grad():
                for n, w in self.params.items():
                    w.add_(self.lifted[n].to(w.device))
            self.student.eval()
            with torch.no_grad():
                yield self.student
        finally:
            self.student.train(was_training)
            apply_masks(self.params, self.masks)

    # ---------------------------------------------------------- loss

    def _forward(self, model: nn.Module, batch: Batch) -> tuple[object, list[Tensor]]:
        """Run `model` (student, DDP wrapper or teacher); its outputs and representation(s)."""
        pooled = capture_output(_pooler(model)) if self.representation == "pooled" else nullcontext([])
        with pooled as captured:
            outputs = model(**batch, output_hidden_states=self.representation in ("cls", "all_layers"))
        if self.representation == "cls":
            reps = [outputs.hidden_states[-1][:, 0]]  # [N, H]
        elif self.representation == "all_layers":
            reps = [h[:, 0] for h in outputs.hidden_states[1:]]  # L x [N, H]
        elif self.representation == "pooled":
            reps = captured  # [N, H]
        else:
            reps = [outputs.logits]  # [N, C]
        return outputs, reps

    def _teacher_forward(self, batch: Batch) -> tuple[object, list[Tensor]]:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        if self.teacher is None:
            with self.masks_lifted() as unpruned:
                return self._forward(unpruned, inputs)
        device = next(self.student.parameters()).device
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        with torch.no_grad():
            return self._forward(self.teacher, inputs)

    def teacher_outputs_spec(self) -> TeacherOutputs | None:
        """logits [C] and representation(s) [R, d] per example; None in shared mode, whose
        teacher is the student's own weights (they change as it trains)."""
        if self.teacher is None:
            return None
        return TeacherOutputs(f"sdp/{self.representation}", (("logits", ()), ("reps", ())))

    def teacher_outputs(self, inputs: Batch) -> dict[str, Tensor]:
        """The frozen teacher's {"logits": [N, C], "reps": [N, R, d]} (R = L for "all_layers", else 1)."""
        outputs, reps = self._teacher_forward(inputs)
        return {"logits": outputs.logits, "reps": torch.stack(reps, dim=1)}

    def distill_loss(self, student_out, student_reps: list[Tensor], teacher_out,
                     teacher_reps: list[Tensor]) -> Tensor:
        """The self-distillation term (before beta) for the configured `self_loss`."""
        if self.self_loss == "kl_logits" and student_out.logits.shape[-1] > 1:
            return losses.kl_logits(student_out.logits, teacher_out.logits, self.temperature)
        if self.self_loss in ("mse_logits", "kl_logits"):
            return losses.mse_logits(student_out.logits, teacher_out.logits)
        pairs = list(zip(student_reps, teacher_reps))
        if self.self_loss == "cosine":
            return sum(losses.cosine_loss(s, t) for s, t in pairs)
        return sum(losses.cross_correlation_loss(s, t, self.cc_lambda) for s, t in pairs)

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        """CE(y, f_pruned(x)) + beta * self-distillation loss, and its parts as logs."""
        batch, cached = teacher_outputs.split(batch)  # precomputed frozen-teacher outputs, if any
        if "labels" not in batch:
            raise ValueError(f"batch has no 'labels' (keys: {sorted(batch)}); the task loss needs them")
        # Teacher first: the shared mode edits the weights in place, which must happen
        # before the student's forward saves them for backward.
        if cached:
            teacher_out, teacher_reps = _Logits(cached["logits"]), list(cached["reps"].unbind(1))
        else:
            teacher_out, teacher_reps = self._teacher_forward(batch)
        student_out, student_reps = self._forward(model, batch)
        task = student_out.loss
        distill = self.distill_loss(student_out, student_reps, teacher_out, teacher_reps)
        self.recovery.observe(self.step, float(task.detach()))
        logs = {"task_loss": float(task.detach()), "self_loss": float(distill.detach()),
                "sparsity": self.schedule.sparsity_at(self.step)}
        return task + self.beta * distill, logs

    # ---------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Tensor]:
        """MaskedMethod's state, plus "lifted.<name>" [*] (pruned values) in shared mode."""
        state = super().state_dict()
        for n, values in self.lifted.items():
            state[_LIFTED_PREFIX + n] = values.detach().to("cpu").contiguous()
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        lifted = {k[len(_LIFTED_PREFIX):]: v for k, v in state.items() if k.startswith(_LIFTED_PREFIX)}
        if self.teacher_mode == "shared" and set(lifted) != set(self.params):
            raise ValueError("sdp (teacher_mode='shared') state has no kept-aside pruned values "
                             "for every masked weight")
        super().load_state_dict({k: v for k, v in state.items() if not k.startswith(_LIFTED_PREFIX)})
        if self.teacher_mode == "shared":
            self.lifted = {n: lifted[n].to(self.params[n].device, self.params[n].dtype)
                           for n in self.params}


class _Logits(NamedTuple):
    """Precomputed teacher logits [N, C], read where the live outputs' `.logits` are."""

    logits: Tensor


def _pooler(model: nn.Module) -> nn.Module:
    """The pooler of `model` (the student, its DDP wrapper or the teacher)."""
    inner = model.module if hasattr(model, "module") else model
    pooler = getattr(inner.base_model, "pooler", None)
    if pooler is None:
        raise ValueError(f"{type(inner).__name__} has no pooler; use representation='cls'")
    return pooler
