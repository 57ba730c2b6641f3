"""Gradual magnitude pruning (GMP): the baseline without distillation."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from pruning.methods.base import Batch, MaskedMethod, task_loss
from pruning.targets import word_embedding_weight


class GradualMagnitude(MaskedMethod):
    """Prune the encoder linear weights by magnitude while training on the task loss.

    Defaults follow METHODS.md (GMP baseline: task loss only, the same cubic
    schedule as SDP; `**schedule`: MaskedMethod's schedule options and defaults).
    Only Q, K, V, attention output, FFN in and FFN out weights are pruned, unless
    `prune_embeddings` (default False) adds the word-embedding matrix at the same
    sparsity (for comparisons at equal non-zero count; encoder_sparsity still counts
    the encoder's matrices only).
    """

    name = "gmp"

    def __init__(self, student: nn.Module, *, prune_embeddings: bool = False, **schedule: Any) -> None:
        self.prune_embeddings = prune_embeddings
        super().__init__(student, **schedule)

    def masked_weights(self, student: nn.Module) -> dict[str, nn.Parameter]:
        """The encoder's linear weights, and the word-embedding matrix with `prune_embeddings`."""
        found = super().masked_weights(student)
        return found | word_embedding_weight(student) if self.prune_embeddings else found

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        loss = task_loss(model, batch)
        self.recovery.observe(self.step, float(loss.detach()))
        logs = {"task_loss": float(loss.detach()), "sparsity": self.schedule.sparsity_at(self.step)}
        return loss, logs
