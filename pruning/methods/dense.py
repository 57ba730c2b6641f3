"""Plain fine-tuning: the task loss and no masks (trains the teacher)."""

from __future__ import annotations

from torch import Tensor, nn

from pruning.methods.base import Batch, PruningMethod, task_loss


class Dense(PruningMethod):
    """Fine-tune every weight on the task loss; sparsity 0. Subclasses change `loss`."""

    name = "dense"

    def __init__(self, student: nn.Module) -> None:
        self.student = student

    def on_step_start(self, step: int) -> None:
        pass

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        loss = task_loss(model, batch)
        return loss, {"task_loss": float(loss.detach())}

    def on_step_end(self, step: int) -> None:
        pass

    def state_dict(self) -> dict[str, Tensor]:
        return {}  # nothing beyond the model and optimizer, which the loop saves

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if state:
            raise ValueError(f"{self.name} keeps no state, got keys {sorted(state)}")

    def target_sparsity(self) -> float:
        return 0.0
