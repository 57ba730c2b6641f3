"""Tiny models and batches for the pruning tests (built from configs, never downloaded)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

VOCAB = 100


def make_tiny_bert(seed: int = 0) -> BertForSequenceClassification:
    """BERT with hidden 32, 2 layers, 2 heads, FFN 64, 2 labels."""
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=2,
    )
    return BertForSequenceClassification(config)


def random_batch(
    generator: torch.Generator, size: int = 4, length: int = 8
) -> dict[str, torch.Tensor]:
    """input_ids / attention_mask / token_type_ids [B, T] and labels [B]."""
    return {
        "input_ids": torch.randint(0, VOCAB, (size, length), generator=generator),
        "attention_mask": torch.ones(size, length, dtype=torch.long),
        "token_type_ids": torch.zeros(size, length, dtype=torch.long),
        "labels": torch.randint(0, 2, (size,), generator=generator),
    }


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models only lose to thread overhead, badly so on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_bert() -> Callable[..., BertForSequenceClassification]:
    """make_tiny_bert(seed=0)."""
    return make_tiny_bert


@pytest.fixture
def make_batch() -> Callable[..., dict[str, torch.Tensor]]:
    """random_batch(generator, size=4, length=8)."""
    return random_batch
