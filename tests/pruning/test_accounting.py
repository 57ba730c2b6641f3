from __future__ import annotations

import torch

from pruning.accounting import (
    count_params,
    encoder_sparsity,
    matrix_sparsities,
    model_nonzero_params,
)
from pruning.targets import encoder_linear_weights

QUERY = "bert.encoder.layer.0.attention.self.query.weight"  # [32, 32]
FFN_IN = "bert.encoder.layer.1.intermediate.dense.weight"  # [64, 32]


def test_counts_on_a_hand_built_case(tiny_bert):
    model = tiny_bert()
    total = count_params(model)
    # 4 encoder layers' worth of attention (4 * 32*32) + FFN (2 * 64*32), times 2 layers.
    encoder_total = 2 * (4 * 32 * 32 + 2 * 64 * 32)
    assert sum(w.numel() for w in encoder_linear_weights(model).values()) == encoder_total
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)  # BERT initialises biases to exact zeros; make every count visible
        params = dict(model.named_parameters())
        params[QUERY].view(-1)[:256].zero_()  # a quarter of the query matrix
        params[FFN_IN].zero_()
        params["bert.embeddings.word_embeddings.weight"][:10].zero_()  # 10 x 32, not encoder
        params["classifier.bias"].zero_()  # 2, not encoder
    zeros_encoder = 256 + 64 * 32
    assert encoder_sparsity(model) == zeros_encoder / encoder_total
    sparsities = matrix_sparsities(model)
    assert sparsities[QUERY] == 0.25 and sparsities[FFN_IN] == 1.0
    assert sum(v == 0.0 for v in sparsities.values()) == 10
    assert model_nonzero_params(model) == total - zeros_encoder - 10 * 32 - 2
    assert count_params(model) == total  # zeros still count as parameters
