"""The tiny BERT every test builds from a config, never downloads (DESIGN.md: hidden 32, 2 layers),
its batches, and the product's training step as a test takes it.

tests/conftest.py serves these as fixtures (tiny_config, tiny_encoder, tiny_bert, make_batch,
train_step); a module-level constant a test file needs at import (a config its parametrize
reads) or a module-level helper imports them from here.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LRScheduler
from transformers import BertConfig, BertForSequenceClassification, BertModel

from infra.train import loop
from pruning.methods import PruningMethod

VOCAB = 100
SIZES = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
             intermediate_size=64)


def tiny_bert_config(**overrides: object) -> BertConfig:
    """Vocabulary 100, hidden 32, 2 layers, 2 heads, FFN 64, 2 labels; `overrides` replace any."""
    return BertConfig(**SIZES | {"num_labels": 2} | overrides)


def make_tiny_bert(seed: int = 0, **overrides: object) -> BertForSequenceClassification:
    """The classifier of tiny_bert_config(**overrides), its weights drawn after manual_seed(seed)."""
    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_bert_config(**overrides))


def make_tiny_encoder(seed: int = 0, **overrides: object) -> BertModel:
    """The encoder (with pooler) of tiny_bert_config(**overrides), drawn after manual_seed(seed)."""
    torch.manual_seed(seed)
    return BertModel(tiny_bert_config(**overrides))


def random_batch(
    generator: torch.Generator, size: int = 4, length: int = 8
) -> dict[str, torch.Tensor]:
    """input_ids / attention_mask / token_type_ids [B, T] and labels [B] (two classes)."""
    return {
        "input_ids": torch.randint(0, VOCAB, (size, length), generator=generator),
        "attention_mask": torch.ones(size, length, dtype=torch.long),
        "token_type_ids": torch.zeros(size, length, dtype=torch.long),
        "labels": torch.randint(0, 2, (size,), generator=generator),
    }


def train_step(method: PruningMethod, batch: dict[str, Tensor], optimizer: torch.optim.Optimizer, *,
               step: int, model: nn.Module | None = None, scheduler: LRScheduler | None = None,
               max_grad_norm: float = math.inf) -> tuple[Tensor, dict[str, float]]:
    """infra.train.loop.train_step, the product's one step, with a test's defaults: `model` is
    `method.module` unless given (a DDP wrapper, say), no scheduler, and no clipping, so the
    numbers are those of the test's plain optimizer. Returns the loss [] and the method's logs;
    a NaN or infinite loss raises loop.NonFiniteLossError."""
    return loop.train_step(method, method.module if model is None else model, batch, optimizer,
                           scheduler, step=step, max_grad_norm=max_grad_norm)
