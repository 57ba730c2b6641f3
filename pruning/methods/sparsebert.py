"""SparseBERT: knowledge-aware sparse pruning from the pre-trained weights
(Xu et al., NAACL 2021; METHODS.md section 3)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pruning import losses, teacher_outputs
from pruning.features import capture_attention_scores
from pruning.methods.base import Batch, MaskedMethod
from pruning.teacher_outputs import TeacherOutputs

TARGET_MASK_UPDATES = 100  # METHODS.md: "~100 mask updates"


class SparseBert(MaskedMethod):
    """Prune the *pre-trained* model while distilling the fine-tuned teacher into it.

    METHODS.md section 3 (from the authors' code and slides). The student starts
    from the pre-trained weights, the teacher is the model fine-tuned on the task
    (frozen, eval mode, no grad). Loss, all weights 1 by default (options
    `hidden_weight`, `attention_weight`, `logit_weight`):
      sum over all L + 1 hidden states (embedding output included) of MSE(H_s, H_t)
      + sum over layers of MSE of the pre-softmax attention scores [B, h, T, T],
        padded key positions zeroed (pruning.losses.masked_scores)
      + soft cross-entropy of the student logits against the teacher probabilities
        at `temperature` = 1.0 (our default), averaged over batch x classes as the
        authors' TinyBERT-derived code does, `(- targets_prob * student_likelihood).mean()`
        (1/C of the per-example cross-entropy); for regression (num_labels == 1) MSE
        of the student's prediction to the gold label instead.
    No hard-label term; the task loss is computed for logs and the recovery curve only.
    Student and teacher must have the same widths (no projection is learned: the
    training loop's optimizer only holds the student's parameters).

    Pruning: unstructured magnitude per matrix (`allocation` = "local") of Q, K, V,
    attention output, FFN in and out; embeddings, biases, LayerNorms, pooler and
    classifier stay dense. Schedule (`**schedule`): MaskedMethod's options and defaults
    (start_fraction 0: no dense warm-up), except `end_fraction` = 1.0 (the whole run: no
    fixed-mask phase) and `update_every`, by default total_steps // TARGET_MASK_UPDATES
    (at least 1), so about 100 updates.

    The paper's optimisation recipe is config, not method code: batch 32, learning
    rate 3e-5 constant (warmup_fraction 0 and no decay), weight decay 0.01.
    """

    name = "sparsebert"

    def __init__(
        self, student: nn.Module, *, teacher: nn.Module,
        hidden_weight: float = 1.0,
        attention_weight: float = 1.0,
        logit_weight: float = 1.0,
        temperature: float = 1.0,
        end_fraction: float = 1.0,
        update_every: int | None = None,
        **schedule: Any,
    ) -> None:
        if teacher is student:
            raise ValueError("SparseBERT's teacher must be the fine-tuned model, not the student")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if update_every is None:
            update_every = max(1, schedule["total_steps"] // TARGET_MASK_UPDATES)
        super().__init__(student, end_fraction=end_fraction, update_every=update_every, **schedule)
        s_cfg, t_cfg = student.config, teacher.config
        if (s_cfg.hidden_size, s_cfg.num_hidden_layers) != (t_cfg.hidden_size, t_cfg.num_hidden_layers):
            raise ValueError(
                f"student (hidden {s_cfg.hidden_size}, {s_cfg.num_hidden_layers} layers) and teacher "
                f"(hidden {t_cfg.hidden_size}, {t_cfg.num_hidden_layers} layers) must match")
        self.teacher = teacher.eval().requires_grad_(False)
        self.weights = (hidden_weight, attention_weight, logit_weight)
        self.temperature = temperature

    def _run(self, model: nn.Module, batch: Batch) -> tuple[object, list[Tensor]]:
        with capture_attention_scores(model) as scores:
            outputs = model(**batch, output_hidden_states=True)
        return outputs, scores

    def _teacher(self, batch: Batch, cached: dict[str, Tensor]
                 ) -> tuple[tuple[Tensor, ...], list[Tensor], Tensor]:
        """The teacher's hidden states (L + 1 x [N, T, H]), attention scores (L x [N, h, T, T]) and
        logits [N, C]: the precomputed ones when the batch carried them, else a forward pass."""
        if cached:
            return tuple(cached["hidden"].unbind(1)), list(cached["scores"].unbind(1)), cached["logits"]
        device = next(self.student.parameters()).device
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with torch.no_grad():
            t_out, t_scores = self._run(self.teacher, inputs)
        return t_out.hidden_states, t_scores, t_out.logits

    def teacher_outputs_spec(self) -> TeacherOutputs:
        """Per example: hidden states [L+1, T, H], attention scores [L, h, T, T], logits [C]."""
        return TeacherOutputs("sparsebert", (("hidden", (1,)), ("scores", (2, 3)), ("logits", ())))

    def teacher_outputs(self, inputs: Batch) -> dict[str, Tensor]:
        """The teacher's {"hidden": [N, L+1, T, H], "scores": [N, L, h, T, T], "logits": [N, C]}."""
        hidden, scores, logits = self._teacher(inputs, {})
        return {"hidden": torch.stack(hidden, dim=1), "scores": torch.stack(scores, dim=1), "logits": logits}

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        """Hidden-state + attention-score + prediction distillation; parts as logs."""
        batch, cached = teacher_outputs.split(batch)  # precomputed frozen-teacher outputs, if any
        if "labels" not in batch:
            raise ValueError(f"batch has no 'labels' (keys: {sorted(batch)}); the task loss needs them")
        t_hidden, t_scores, t_logits = self._teacher(batch, cached)
        s_out, s_scores = self._run(model, batch)
        mask = batch.get("attention_mask")
        hidden = losses.hidden_states_mse(s_out.hidden_states, t_hidden)
        attention = losses.attention_scores_mse(s_scores, t_scores, mask)
        if s_out.logits.shape[-1] == 1:  # regression: MSE to gold (METHODS.md)
            prediction = F.mse_loss(s_out.logits.squeeze(-1).float(), batch["labels"].float())
        else:
            # The authors' (TinyBERT's) mean over batch x classes, not the per-example sum.
            prediction = losses.soft_cross_entropy(s_out.logits, t_logits, self.temperature,
                                                   reduction="mean")
        w_h, w_a, w_p = self.weights
        total = w_h * hidden + w_a * attention + w_p * prediction
        task = float(s_out.loss.detach())
        self.recovery.observe(self.step, task)
        logs = {"task_loss": task, "hidden_loss": float(hidden.detach()),
                "attention_loss": float(attention.detach()), "prediction_loss": float(prediction.detach()),
                "sparsity": self.schedule.sparsity_at(self.step)}
        return total, logs
