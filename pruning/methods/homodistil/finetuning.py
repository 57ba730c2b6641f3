"""HomoDistil's stage b: fine-tune the compact student on the task (METHODS.md section 2).

The student is stage a's export (pruning.methods.homodistil.distillation) with a
classifier; it is trained on the task loss while distilling the fine-tuned teacher's
logits. Nothing is pruned here.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pruning import losses
from pruning.features import capture_output
from pruning.methods.base import Batch, task_loss
from pruning.methods.dense import Dense


class CompactFinetune(Dense):
    """Stage b: fine-tune the compact student on the task, distilling the task teacher.

    `student`: CompactBertForSequenceClassification loaded from stage a's export (its
    `classifier` outputs the logits in both layouts: BERT's linear classifier, or
    RoBERTa's head); `teacher`: the fine-tuned Bert-, Roberta- or
    XLMRobertaForSequenceClassification. Loss: task loss
    (pruning.methods.base.task_loss) + kd_weight * KL(teacher || student) on the
    logits at `temperature` (MSE of the logits for regression, num_labels 1);
    kd_weight = 0 skips the teacher's forward. Nothing is pruned here: the student is
    already physically smaller, its weights dense. `final_sparsity` is the parameter
    budget stage a cut it to (1 - kept fraction of the full model's parameters); it is
    only reported, so grid jobs of both stages carry the same budget.
    """

    name = "homodistil"

    def __init__(self, student: nn.Module, *, teacher: nn.Module, total_steps: int,
                 final_sparsity: float = 0.0, kd_weight: float = 1.0,
                 temperature: float = 1.0) -> None:
        if kd_weight < 0 or temperature <= 0:
            raise ValueError(f"need kd_weight >= 0 and temperature > 0, got {kd_weight}, {temperature}")
        if not hasattr(student, "classifier"):
            raise ValueError(f"{type(student).__name__} has no classifier; load the stage-a export "
                             "as CompactBertForSequenceClassification")
        self.student, self.teacher = student, teacher.eval().requires_grad_(False)
        self.total_steps, self.kd_weight, self.temperature = total_steps, kd_weight, temperature
        self.budget = final_sparsity

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        """Task loss plus logit distillation; model is the possibly DDP-wrapped student."""
        with capture_output(self.student.classifier) as logits:  # one forward serves both terms
            task = task_loss(model, batch)
        logs = {"task_loss": float(task.detach())}
        if self.kd_weight == 0:
            return task, logs
        student = logits[-1]
        if next(self.teacher.parameters()).device != student.device:
            self.teacher.to(student.device)
        with torch.no_grad():
            teacher = self.teacher(**{k: v for k, v in batch.items() if k != "labels"}).logits
        kd = (losses.mse_logits(student, teacher) if student.shape[-1] == 1
              else losses.kl_logits(student, teacher, self.temperature))
        logs["kd_loss"] = float(kd.detach())
        return task + self.kd_weight * kd, logs
