"""bench/speed.py's accounting: the FLOP count it divides by and the time breakdown it reports."""

from __future__ import annotations

import pytest
from transformers import BertForSequenceClassification

from bench import speed
from tests.tiny import VOCAB, make_tiny_bert, tiny_bert_config

CONFIG = tiny_bert_config()
H, F, LAYERS = CONFIG.hidden_size, CONFIG.intermediate_size, CONFIG.num_hidden_layers


@pytest.fixture(scope="module")
def teacher() -> BertForSequenceClassification:
    return make_tiny_bert(seed=0).eval()


def _expected_flops(hidden: int, inner: int, ffn: int, batch: int) -> int:
    """Multiply-adds x 2 of a BERT forward: Q, K, V, output (hidden x heads*head_size) and FFN
    over every token, the two attention matmuls (T x T scores), then the pooler and
    classifier on [CLS] only."""
    tokens = batch * speed.SEQ_LEN
    per_layer = 2 * tokens * (4 * hidden * inner + 2 * hidden * ffn) + 4 * batch * speed.SEQ_LEN ** 2 * inner
    return LAYERS * per_layer + 2 * batch * (hidden * hidden + hidden * 2)


@pytest.mark.parametrize("batch", [1, 3])
def test_flop_count_covers_the_linear_layers_and_attention(teacher, batch):
    assert speed.count_flops(teacher, batch, vocab=VOCAB) == _expected_flops(H, H, F, batch)


def test_sliced_model_has_the_flops_of_its_widths_and_the_masked_models_logits(teacher):
    masked, sliced, widths = speed.build(teacher, 0.5, multiple_of=1)
    assert speed.max_logit_diff(masked, sliced, vocab=VOCAB) < speed.ATOL
    assert len(set(widths.ffn)) == len(set(widths.heads)) == 1  # the same widths in every layer
    inner = widths.heads[0] * widths.head_size[0]
    assert widths.hidden < H and inner < H and widths.ffn[0] < F
    assert speed.count_flops(sliced, 1, vocab=VOCAB) == _expected_flops(widths.hidden, inner, widths.ffn[0], 1)
    assert speed.count_flops(masked, 1, vocab=VOCAB) == speed.count_flops(teacher, 1, vocab=VOCAB)


def test_time_shares_name_the_ops_a_bert_forward_spends_its_time_on(teacher):
    shares = speed.time_shares(teacher, 2, vocab=VOCAB, forwards=1)
    # If torch renamed an op, its time would fall into "other" and the breakdown would lie.
    assert {"linear", "attention", "gelu", "layer_norm"} <= set(shares)
    assert all(ms >= 0 for ms in shares.values()) and shares["linear"] > 0


def test_flop_bound_splits_efficiency_into_counted_ops_and_the_rest():
    teacher = {"linear": 8.0, "attention": 2.0, "gelu": 1.0}
    # Counted ops exactly twice as fast (FLOP ratio 2), GELU not faster at all.
    bound = speed.flop_bound(teacher, {"linear": 4.0, "attention": 1.0, "gelu": 1.0}, flop_ratio=2.0)
    assert bound["counted_ops_efficiency"] == pytest.approx(1.0)
    assert bound["uncounted_share_teacher"] == pytest.approx(1 / 11)
    assert bound["uncounted_share_model"] == pytest.approx(1 / 6)
    assert bound["efficiency_bound"] == pytest.approx(11 / 12)  # 11 ms / (2 x 6 ms), not 1
    ideal = speed.flop_bound(teacher, {"linear": 4.0, "attention": 1.0, "gelu": 0.5}, flop_ratio=2.0)
    assert ideal["efficiency_bound"] == pytest.approx(1.0)  # everything shrank with the FLOPs
