"""Parameter counts under both conventions METHODS.md reports.

`encoder_sparsity` counts as SparseBERT, movement pruning, oBERT and PLATON do
(zeros among the encoder's linear weights); `model_nonzero_params` counts as
HomoDistil does (non-zeros of the whole model, embeddings included).
`count_params_for` and `encoder_macs` count a model of given widths without building
it, so a width choice (pruning.sizing) and the speed benchmark can weigh one.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig

from pruning.compact_config import Widths
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


def count_params_for(config: BertConfig, widths: Widths, *, pooler: bool = True,
                     num_labels: int = 0) -> int:
    """What pruning.accounting.count_params gives for a model of `widths`, without building it.

    Counts embeddings (word, position, token type, LayerNorm), every layer, the pooler
    when `pooler`, and a classifier of `num_labels` outputs (0: none, as BertModel).
    """
    h = widths.hidden
    total = (config.vocab_size + config.max_position_embeddings + config.type_vocab_size) * h + 2 * h
    for a, f in zip(widths.attention(), widths.ffn):
        # W_q, W_k, W_v with biases; W_o and its bias; FFN in and out; two LayerNorms.
        total += 3 * (a * h + a) + (a * h + h) + (2 * f * h + f + h) + 4 * h
    if pooler:
        total += h * h + h
    return total + num_labels * (h + 1)


def encoder_macs(widths: Widths, seq_len: int) -> int:
    """Multiply-accumulates of the encoder layers for one sequence of `seq_len` tokens.

    Per layer: the Q, K, V and output projections (4 a h per token), the FFN (2 h f per
    token) and the two attention products (2 T a per token); embeddings, LayerNorms
    and softmax are left out as negligible.
    """
    per_token = sum(4 * a * widths.hidden + 2 * widths.hidden * f + 2 * seq_len * a
                    for a, f in zip(widths.attention(), widths.ffn))
    return seq_len * per_token
