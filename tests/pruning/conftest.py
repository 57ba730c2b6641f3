"""Tiny models and batches for the pruning tests (built from configs, never downloaded)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
    RobertaModel,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
    XLMRobertaModel,
)

VOCAB = 100
PAD = 1  # RoBERTa's and XLM-R's pad_token_id
ROBERTA_KINDS = {  # model_type -> (config, encoder, classifier)
    "roberta": (RobertaConfig, RobertaModel, RobertaForSequenceClassification),
    "xlm-roberta": (XLMRobertaConfig, XLMRobertaModel, XLMRobertaForSequenceClassification),
}


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


def make_tiny_roberta(kind: str = "xlm-roberta", seed: int = 0, *, head: bool = True,
                      **overrides: object) -> nn.Module:
    """RoBERTa / XLM-R classifier (head) or encoder: hidden 32, 2 layers, 2 heads, FFN 64,
    2 labels; one token type and pad_token_id 1, as the released checkpoints."""
    config_class, encoder, classifier = ROBERTA_KINDS[kind]
    sizes = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64, num_labels=2, max_position_embeddings=40, type_vocab_size=1,
                 pad_token_id=PAD)
    torch.manual_seed(seed)
    return (classifier if head else encoder)(config_class(**sizes | overrides))


def roberta_batch(
    generator: torch.Generator, size: int = 4, length: int = 8
) -> dict[str, torch.Tensor]:
    """input_ids (<s> first, pad id 1 after each row's length) / attention_mask [B, T] and
    labels [B]; no token_type_ids (XLM-R tokenizers return none)."""
    lengths = torch.randint(length // 2, length + 1, (size,), generator=generator)
    lengths[0] = length
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    ids = torch.randint(3, VOCAB, (size, length), generator=generator).masked_fill(mask == 0, PAD)
    ids[:, 0] = 0
    return {"input_ids": ids, "attention_mask": mask,
            "labels": torch.randint(0, 2, (size,), generator=generator)}


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


@pytest.fixture
def tiny_roberta() -> Callable[..., nn.Module]:
    """make_tiny_roberta(kind="xlm-roberta", seed=0, *, head=True, **config overrides)."""
    return make_tiny_roberta


@pytest.fixture
def make_roberta_batch() -> Callable[..., dict[str, torch.Tensor]]:
    """roberta_batch(generator, size=4, length=8)."""
    return roberta_batch
