"""RoBERTa and XLM-R twins of the tiny BERT, and one thread, for the pruning tests (built from
configs, never downloaded). The tiny BERT, its batches and the training step: tests/conftest.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn
from transformers import (
    RobertaConfig,
    RobertaForSequenceClassification,
    RobertaModel,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
    XLMRobertaModel,
)

from tests.tiny import SIZES, VOCAB

PAD = 1  # RoBERTa's and XLM-R's pad_token_id
ROBERTA_KINDS = {  # model_type -> (config, encoder, classifier)
    "roberta": (RobertaConfig, RobertaModel, RobertaForSequenceClassification),
    "xlm-roberta": (XLMRobertaConfig, XLMRobertaModel, XLMRobertaForSequenceClassification),
}


def make_tiny_roberta(kind: str = "xlm-roberta", seed: int = 0, *, head: bool = True,
                      **overrides: object) -> nn.Module:
    """RoBERTa / XLM-R classifier (head) or encoder: the tiny BERT's sizes, 2 labels; one token
    type and pad_token_id 1, as the released checkpoints."""
    config_class, encoder, classifier = ROBERTA_KINDS[kind]
    sizes = SIZES | dict(num_labels=2, max_position_embeddings=40, type_vocab_size=1, pad_token_id=PAD)
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


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models only lose to thread overhead, badly so on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_roberta() -> Callable[..., nn.Module]:
    """make_tiny_roberta(kind="xlm-roberta", seed=0, *, head=True, **config overrides)."""
    return make_tiny_roberta


@pytest.fixture
def make_roberta_batch() -> Callable[..., dict[str, torch.Tensor]]:
    """roberta_batch(generator, size=4, length=8)."""
    return roberta_batch
