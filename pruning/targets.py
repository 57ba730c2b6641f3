"""Which weights the unstructured methods prune: the encoder's linear weights.

METHODS.md counts sparsity over Q, K, V, attention output, FFN in and FFN out of
every encoder layer; embeddings, biases, LayerNorms, pooler and classifier stay
dense. One function names those weights so masks, accounting and every method
agree on the same set.
"""

from __future__ import annotations

import re

from torch import nn

# Matches BERT / RoBERTa / XLM-R layouts ("bert.encoder.layer.3.attention.self.query")
# and DDP-wrapped names ("module.bert.encoder.layer.3...."); the pooler, classifier
# and embeddings live outside `encoder.layer.<i>.`.
_ENCODER_LAYER = re.compile(r"(?:^|\.)encoder\.layer\.\d+\.")


def encoder_linear_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """Return the weight of every nn.Linear inside an encoder layer.

    For BERT-like models that is 6 matrices per layer, in model order: query,
    key, value [H, H], attention output [H, H], intermediate [I, H] and
    output [H, I], keyed by their qualified parameter name (as in
    `model.named_parameters()`). Biases are not included.

    Raises:
        ValueError: the model has no linear layers under `encoder.layer.<i>.`.
    """
    weights: dict[str, nn.Parameter] = {}
    for module_name, module in model.named_modules():
        # The trailing dot lets a module named exactly "encoder.layer.0" not match.
        if isinstance(module, nn.Linear) and _ENCODER_LAYER.search(module_name + "."):
            weights[f"{module_name}.weight"] = module.weight
    if not weights:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear under 'encoder.layer.<i>.'; "
            "pruning supports BERT / RoBERTa / XLM-R encoder layouts"
        )
    return weights


def word_embedding_weight(model: nn.Module) -> dict[str, nn.Parameter]:
    """{qualified name: weight} of the model's word-embedding matrix [vocab, H].

    Not pruned by default; methods that take `prune_embeddings` add it, so a
    comparison at equal non-zero count can reach budgets below the embeddings' size.
    """
    weight = model.get_input_embeddings().weight
    for name, param in model.named_parameters():
        if param is weight:
            return {name: param}
    raise ValueError(f"{type(model).__name__}'s input embeddings are not among its parameters")
