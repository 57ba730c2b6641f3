"""Evaluate a saved model: task metrics, sparsity in both conventions, size, CPU latency.

Latency is measured in the calling process with a fixed thread count, after all
training has finished, so jobs do not disturb each other's timings.
"""

from __future__ import annotations

import statistics
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from infra import data, models
from pruning.accounting import count_params, encoder_sparsity, model_nonzero_params


@dataclass(frozen=True)
class LatencySpec:
    batch_sizes: tuple[int, ...] = (1, 32)
    seq_len: int = 128
    repeats: int = 10
    threads: int = 1


@torch.inference_mode()
def predict(model: nn.Module, table, batch_size: int, pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted and gold labels over a split, in order: ([N], [N])."""
    preds, golds = [], []
    for batch in data.batches(table, batch_size, shuffle=False, seed=0, pad_token_id=pad_token_id):
        labels = batch.pop("labels")
        logits = model(**batch).logits  # [B, num_labels]
        preds.append(logits.argmax(dim=-1))
        golds.append(labels)
    return torch.cat(preds), torch.cat(golds)


def classification_metrics(pred: torch.Tensor, gold: torch.Tensor) -> dict[str, float]:
    """Accuracy and macro-F1 over integer labels."""
    accuracy = (pred == gold).float().mean().item()
    f1s = []
    for label in torch.unique(torch.cat([pred, gold])).tolist():
        tp = ((pred == label) & (gold == label)).sum().item()
        fp = ((pred == label) & (gold != label)).sum().item()
        fn = ((pred != label) & (gold == label)).sum().item()
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return {"accuracy": accuracy, "f1_macro": sum(f1s) / len(f1s)}


@torch.inference_mode()
def latency_ms(model: nn.Module, batch_size: int, seq_len: int, repeats: int, vocab_size: int) -> float:
    """Median wall time of one forward pass at [batch_size, seq_len], in milliseconds."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab_size, (batch_size, seq_len), generator=generator)  # [B, T]
    mask = torch.ones_like(ids)
    for _ in range(2):  # warm-up: allocator and kernel selection
        model(input_ids=ids, attention_mask=mask)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(input_ids=ids, attention_mask=mask)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def size_metrics(model_dir: Path) -> dict[str, float]:
    """Weights file size as stored, and compressed (what zeros save when shipped zipped)."""
    weights = Path(model_dir) / "model.safetensors"
    raw = weights.read_bytes()
    return {
        "size_mb": len(raw) / 1e6,
        "size_compressed_mb": len(zlib.compress(raw, level=1)) / 1e6,
    }


def evaluate(model_dir: str, ref: data.DatasetRef, *, batch_size: int, latency: LatencySpec) -> dict[str, float]:
    """All metrics of one saved model as a flat dict (MLflow metric names)."""
    model = models.load_saved(model_dir)
    pad = getattr(model.config, "pad_token_id", 0) or 0
    metrics: dict[str, float] = {}
    for split in ("dev", "test"):
        pred, gold = predict(model, data.read_split(ref, split), batch_size, pad)
        metrics |= {f"{split}_{k}": v for k, v in classification_metrics(pred, gold).items()}
    metrics |= {
        "encoder_sparsity": encoder_sparsity(model),
        "model_nonzero_params": float(model_nonzero_params(model)),
        "model_params": float(count_params(model)),
    }
    metrics |= size_metrics(Path(model_dir))
    threads = torch.get_num_threads()
    torch.set_num_threads(latency.threads)
    try:
        seq_len = min(latency.seq_len, model.config.max_position_embeddings)
        for b in latency.batch_sizes:
            metrics[f"latency_ms_b{b}"] = latency_ms(model, b, seq_len, latency.repeats,
                                                     model.config.vocab_size)
    finally:
        torch.set_num_threads(threads)
    return metrics
