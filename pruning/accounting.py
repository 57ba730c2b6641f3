"""Parameter counts under both conventions METHODS.md reports.

`encoder_sparsity` counts as SparseBERT, movement pruning, oBERT and PLATON do
(zeros among the encoder's linear weights); `model_nonzero_params` counts as
HomoDistil does (non-zeros of the whole model, embeddings included).
"""

from __future__ import annotations

import torch
from torch import nn

from pruning.targets import encoder_linear_weights


def count_params(model: nn.Module) -> int:
    """All parameters of the model (tied weights once)."""
    return sum(p.numel() for p in model.parameters())


def model_nonzero_params(model: nn.Module) -> int:
    """Non-zero parameters of the whole model, embeddings included (tied once)."""
    return sum(int(torch.count_nonzero(p.detach())) for p in model.parameters())


def matrix_sparsities(model: nn.Module) -> dict[str, float]:
    """Fraction of exact zeros in each encoder linear weight, by parameter name."""
    return {
        name: (w.numel() - int(torch.count_nonzero(w.detach()))) / w.numel()
        for name, w in encoder_linear_weights(model).items()
    }


def encoder_sparsity(model: nn.Module) -> float:
    """Fraction of exact zeros among all encoder linear weights together."""
    weights = encoder_linear_weights(model).values()
    total = sum(w.numel() for w in weights)
    nonzero = sum(int(torch.count_nonzero(w.detach())) for w in weights)
    return (total - nonzero) / total
