"""Self-distilled pruning (SDP): prune the fine-tuned model while pulling its
representation towards the unpruned model's (METHODS.md section 1)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from pruning import losses, teacher_outputs
from pruning.features import capture_output
from pruning.masks import apply_masks
from pruning.methods.base import Batch, MaskedMethod
from pruning.teacher_outputs import TeacherOutputs

Representation = Literal["cls", "pooled", "logits", "all_layers"]
SelfLoss = Literal["cross_correlation", "kl_logits", "mse_logits", "cosine"]
TeacherMode = Literal["frozen", "shared"]
REPRESENTATIONS: tuple[Representation, ...] = ("cls", "pooled", "logits", "all_layers")
SELF_LOSSES: tuple[SelfLoss, ...] = ("cross_correlation", "kl_logits", "mse_logits", "cosine")
TEACHER_MODES: tuple[TeacherMode, ...] = ("frozen", "shared")
_LIFTED_PREFIX = "lifted."
_QUEUE_PREFIX = "cc_queue."


class SelfDistilled(MaskedMethod):
    """Magnitude pruning of the fine-tuned model with self-distillation (O'Neill et al.).

    The student starts from the fine-tuned teacher; its unpruned version is the
    teacher. Loss: L = CE(y, f_pruned(x)) + beta * L_cc(z_pruned, z_unpruned), with
    the Barlow Twins-style cross-correlation L_cc of pruning.losses; its on- and
    off-diagonal parts are logged ("cc_on_diag", "cc_off_diag" times cc_lambda).
    Gradients reach only the pruned branch: the teacher runs under no_grad.

    Defaults (METHODS.md section 1; the open details are options, defaults named there):
      beta = 1.0 (the paper's grid: 0.1, 0.5, 1.0); cc_lambda = 5.1e-3.
      cc_target = "teacher" (ours): L_cc = sum_i (T_ii - C_ii)^2 + cc_lambda *
        sum_{i != j} (C_ij - T_ij)^2, T the frozen teacher's own correlations on the
        same rows, so the teacher is the minimum (0, zero gradient). The paper's Barlow
        Twins target T = I ("identity") is not: with N = 32 and d = 384, C has rank
        <= 31 and the off-diagonal sum a floor (about 22 at 5.1e-3), its gradient at
        student == teacher decorrelates, and features of variance below eps push on the
        diagonal. On the demo's fine-tuned MiniLM [CLS] "identity" has at the teacher a
        gradient 0.34 times that at a 70%-pruned copy, its minimum on the line between
        them halfway; a 1024-example queue or cc_lambda = 0 keep a push (0.38, 0.45),
        the logits or a 16-d projection shrink it (0.001, 0.003) but keep the minimum
        off the teacher; "teacher": 0 (issue 14's measurement).
      cc_queue = 0: earlier examples (both sides' features, detached) joining each
        batch's correlation, the last cc_queue of them; only this batch carries
        gradient. Kept in the checkpoint.
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
      Schedule (`**schedule`): MaskedMethod's options and defaults, as GMP's.
    """

    name = "sdp"

    def __init__(
        self, student: nn.Module, *, teacher: nn.Module,
        beta: float = 1.0,
        cc_lambda: float = losses.CC_LAMBDA,
        cc_target: losses.CorrelationTarget = "teacher",
        cc_queue: int = 0,
        representation: Representation = "cls",
        self_loss: SelfLoss = "cross_correlation",
        teacher_mode: TeacherMode = "frozen",
        temperature: float = 1.0,
        **schedule: Any,
    ) -> None:
        for value, valid, what in ((representation, REPRESENTATIONS, "representation"),
                                   (self_loss, SELF_LOSSES, "self_loss"),
                                   (teacher_mode, TEACHER_MODES, "teacher_mode"),
                                   (cc_target, losses.CORRELATION_TARGETS, "cc_target")):
            if value not in valid:
                raise ValueError(f"{what} must be one of {valid}, got {value!r}")
        if beta < 0 or temperature <= 0:
            raise ValueError(f"need beta >= 0 and temperature > 0, got {beta}, {temperature}")
        if cc_queue < 0:
            raise ValueError(f"cc_queue must be >= 0 (queued examples), got {cc_queue}")
        super().__init__(student, **schedule)
        self.beta, self.cc_lambda, self.temperature = beta, cc_lambda, temperature
        self.cc_target: losses.CorrelationTarget = cc_target
        self.cc_queue = cc_queue
        # Per representation: (student [Q, d], teacher [Q, d]) rows of earlier batches, detached.
        self.queued: list[tuple[Tensor, Tensor]] = []
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
        return sum(self.distill_parts(student_out, student_reps, teacher_out, teacher_reps).values())

    def distill_parts(self, student_out, student_reps: list[Tensor], teacher_out,
                      teacher_reps: list[Tensor]) -> dict[str, Tensor]:
        """The self-distillation term as parts that add up to it: for the cross-correlation
        "cc_on_diag" and "cc_off_diag" (times cc_lambda), summed over representations and
        computed on the queued rows plus this batch's; for the others "self_loss" alone."""
        if self.self_loss == "kl_logits" and student_out.logits.shape[-1] > 1:
            return {"self_loss": losses.kl_logits(student_out.logits, teacher_out.logits, self.temperature)}
        if self.self_loss in ("mse_logits", "kl_logits"):
            return {"self_loss": losses.mse_logits(student_out.logits, teacher_out.logits)}
        if self.self_loss == "cosine":
            return {"self_loss": sum(losses.cosine_loss(s, t) for s, t in zip(student_reps, teacher_reps))}
        on = off = torch.zeros((), device=student_reps[0].device)
        for i, (s, t) in enumerate(zip(student_reps, teacher_reps)):
            if i < len(self.queued):  # earlier rows first; only this batch's carry gradient
                s_q, t_q = (q.to(s.device) for q in self.queued[i])
                s, t = torch.cat([s_q, s.float()]), torch.cat([t_q, t.float()])
            part_on, part_off = losses.cross_correlation_parts(s, t, target=self.cc_target)
            on, off = on + part_on, off + part_off
        return {"cc_on_diag": on, "cc_off_diag": self.cc_lambda * off}

    def enqueue(self, student_reps: list[Tensor], teacher_reps: list[Tensor]) -> None:
        """Keep the last `cc_queue` rows of both sides' features [N, d], detached."""
        if self.self_loss != "cross_correlation" or self.cc_queue == 0:
            return
        queued = []
        for i, (s, t) in enumerate(zip(student_reps, teacher_reps)):
            s, t = s.detach().float(), t.detach().float()
            if i < len(self.queued):
                s_q, t_q = (q.to(s.device) for q in self.queued[i])
                s, t = torch.cat([s_q, s]), torch.cat([t_q, t])
            queued.append((s[-self.cc_queue:], t[-self.cc_queue:]))
        self.queued = queued

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
        parts = self.distill_parts(student_out, student_reps, teacher_out, teacher_reps)
        distill = sum(parts.values())
        self.enqueue(student_reps, teacher_reps)
        self.recovery.observe(self.step, float(task.detach()))
        logs = {"task_loss": float(task.detach()), "self_loss": float(distill.detach()),
                "sparsity": self.schedule.sparsity_at(self.step)}
        logs |= {k: float(v.detach()) for k, v in parts.items() if k != "self_loss"}
        return task + self.beta * distill, logs

    # ---------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Tensor]:
        """MaskedMethod's state, plus "lifted.<name>" [*] (pruned values) in shared mode and
        "cc_queue.<i>.student" / ".teacher" [Q, d] (queued features of representation i)."""
        state = super().state_dict()
        for n, values in self.lifted.items():
            state[_LIFTED_PREFIX + n] = values.detach().to("cpu").contiguous()
        for i, pair in enumerate(self.queued):
            for side, rows in zip(("student", "teacher"), pair):
                state[f"{_QUEUE_PREFIX}{i}.{side}"] = rows.to("cpu").contiguous()
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        lifted = {k[len(_LIFTED_PREFIX):]: v for k, v in state.items() if k.startswith(_LIFTED_PREFIX)}
        if self.teacher_mode == "shared" and set(lifted) != set(self.params):
            raise ValueError("sdp (teacher_mode='shared') state has no kept-aside pruned values "
                             "for every masked weight")
        queued = {k[len(_QUEUE_PREFIX):]: v for k, v in state.items() if k.startswith(_QUEUE_PREFIX)}
        self.queued = [(queued[f"{i}.student"], queued[f"{i}.teacher"]) for i in range(len(queued) // 2)]
        super().load_state_dict({k: v for k, v in state.items()
                                 if not k.startswith((_LIFTED_PREFIX, _QUEUE_PREFIX))})
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
