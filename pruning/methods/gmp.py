"""Gradual magnitude pruning (GMP): the baseline without distillation."""

from __future__ import annotations

from torch import Tensor, nn

from pruning.analysis import RECOVERY_STEPS
from pruning.methods.base import Allocation, Batch, MaskedMethod, task_loss
from pruning.schedules import END_FRACTION, START_FRACTION, UPDATE_EVERY, CubicSchedule


class GradualMagnitude(MaskedMethod):
    """Prune the encoder linear weights by magnitude while training on the task loss.

    Defaults follow METHODS.md (GMP baseline: task loss only, the same cubic
    schedule as SDP): sparsity ramps cubically from 0 at `start_fraction` of the
    run to `final_sparsity` at `end_fraction` of it, masks are recomputed from
    |w * mask| every `update_every` steps, then the mask stays fixed while the
    network recovers (defaults: pruning.schedules START_FRACTION, END_FRACTION,
    UPDATE_EVERY); each matrix is ranked on its own (`allocation` = "local";
    "global" ranks all matrices against one threshold).
    Only Q, K, V, attention output, FFN in and FFN out weights are pruned, unless
    `prune_embeddings` (default False) adds the word-embedding matrix at the same
    sparsity (for comparisons at equal non-zero count; encoder_sparsity still counts
    the encoder's matrices only).
    `recovery_steps` is how many steps after each mask update the task loss is
    recorded for the recovery curve (pruning.analysis.RecoveryTracker; default
    RECOVERY_STEPS there).
    """

    name = "gmp"

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
        prune_embeddings: bool = False,
    ) -> None:
        schedule = CubicSchedule.over_run(
            total_steps,
            final_sparsity,
            start_fraction=start_fraction,
            end_fraction=end_fraction,
            update_every=update_every,
        )
        super().__init__(student, schedule=schedule, allocation=allocation,
                         recovery_steps=recovery_steps, prune_embeddings=prune_embeddings)

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        loss = task_loss(model, batch)
        self.recovery.observe(self.step, float(loss.detach()))
        logs = {"task_loss": float(loss.detach()), "sparsity": self.schedule.sparsity_at(self.step)}
        return loss, logs
