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

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import nn

from infra import data
from infra.evaluate import metrics
from infra.models import pretrained
from pruning.accounting import count_params, encoder_sparsity, model_nonzero_params
from pruning.analysis import fisher_criterion, silhouette_score, weight_snr

SEPARABILITY_POINTS = 2000  # dev examples at most: the silhouette builds an [N, N] matrix


@dataclass(frozen=True)
class SplitPredictions:
    """One split's predictions, in the length-sorted order `predict` ran them."""

    example_id: torch.Tensor  # [N] row index in the prepared split: the same example for every model
    pred: torch.Tensor  # [N] class index, or a regression's predicted score
    gold: torch.Tensor  # [N]
    score: torch.Tensor  # [N] probability of the predicted class; a regression's prediction


@torch.inference_mode()
def predict(model: nn.Module, table, batch_size: int, pad_token_id: int) -> SplitPredictions:
    """Predictions, gold labels and scores over a split, pairwise but sorted by length (each [N]).

    A classifier predicts the arg-max class; a regression head (num_labels 1) its single
    output, the predicted score. Sorting by length makes each batch pad to nearly its own
    length (several times less padding on short texts); every metric is order-free, and
    `example_id` maps each prediction back to its row.
    """
    lengths = pc.list_value_length(table["input_ids"]).to_numpy()
    order = np.argsort(lengths, kind="stable")
    table = table.take(order)
    preds, golds, scores = [], [], []
    for batch in data.batches(table, batch_size, shuffle=False, seed=0, pad_token_id=pad_token_id):
        labels = batch.pop("labels")
        logits = model(**batch).logits  # [B, num_labels]
        if logits.shape[-1] == 1:
            preds.append(logits[:, 0])
            scores.append(logits[:, 0].float())
        else:
            preds.append(logits.argmax(dim=-1))
            scores.append(logits.float().softmax(dim=-1).amax(dim=-1))
        golds.append(labels)
    return SplitPredictions(torch.from_numpy(order), torch.cat(preds), torch.cat(golds), torch.cat(scores))


def predictions_table(predictions: dict[str, SplitPredictions]) -> pa.Table:
    """Every evaluated split's predictions, one row per example in example-id order (columns
    split, example_id, label, prediction, score): what paired statistics read."""
    parts = []
    for split, p in predictions.items():
        back = torch.argsort(p.example_id)  # length-sorted -> example-id order
        kind = pa.float32() if p.pred.is_floating_point() else pa.int32()
        parts.append(pa.table({
            "split": pa.array([split] * len(back), pa.string()),
            "example_id": _column(p.example_id[back], pa.int32()),
            "label": _column(p.gold[back], kind), "prediction": _column(p.pred[back], kind),
            "score": _column(p.score[back], pa.float32()),
        }))
    return pa.concat_tables(parts)


def _column(values: torch.Tensor, kind: pa.DataType) -> pa.Array:
    # Small types keep the artifact small: a few bytes per example and column.
    return pa.array((values.float() if values.is_floating_point() else values).numpy()).cast(kind)


def task_metrics(ref: data.DatasetRef, splits: dict[str, tuple[torch.Tensor, torch.Tensor]]
                 ) -> dict[str, float]:
    """`<split>_<metric>` for every split and every metric of the task, plus `<split>_score`; a
    cross-lingual task adds `dev_avg_<metric>` and `test_avg_<metric>`, the means over its
    languages (each language weighs the same, whatever its size)."""
    out: dict[str, float] = {}
    for split, (pred, gold) in splits.items():
        values = metrics.compute(pred.numpy(), gold.numpy(), ref.metrics, ref.score)
        out |= {f"{split}_{name}": value for name, value in values.items()}
    for group in ("dev", "test"):
        members = [s for s, _ in ref.languages if s.split("_")[0] == group and s in splits]
        for name in (*ref.metrics, "score") if members else ():
            out[f"{group}_avg_{name}"] = sum(out[f"{s}_{name}"] for s in members) / len(members)
    return out


@torch.inference_mode()
def latency_ms(model: nn.Module, batch_size: int, seq_len: int, repeats: int, vocab_size: int) -> float:
    """Median wall time of one forward pass at [batch_size, seq_len], in milliseconds."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab_size, (batch_size, seq_len), generator=generator)  # [B, T]
    mask = torch.ones_like(ids)
    for _ in range(1):  # warm-up: allocator and kernel selection
        model(input_ids=ids, attention_mask=mask)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(input_ids=ids, attention_mask=mask)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


@torch.inference_mode()
def cls_features(model: nn.Module, table, batch_size: int, pad_token_id: int,
                 max_points: int = SEPARABILITY_POINTS) -> tuple[torch.Tensor, torch.Tensor]:
    """Last-layer [CLS] hidden states [N, H] and labels [N] of the first `max_points` rows."""
    feats, golds, seen = [], [], 0
    for batch in data.batches(table, batch_size, shuffle=False, seed=0, pad_token_id=pad_token_id):
        if seen >= max_points:
            break
        golds.append(batch.pop("labels"))
        feats.append(model(**batch, output_hidden_states=True).hidden_states[-1][:, 0])
        seen += golds[-1].shape[0]
    return torch.cat(feats)[:max_points].float(), torch.cat(golds)[:max_points]


def analysis_metrics(model: nn.Module, ref: data.DatasetRef, batch_size: int,
                     pad_token_id: int) -> dict[str, float]:
    """SDP's analysis (pruning.analysis): weight SNR, and for classifiers the separability of
    the last-layer [CLS] on dev (Fisher criterion, cosine silhouette)."""
    out = {"weight_snr": weight_snr(model)}
    dev = next((split for split, size in ref.sizes if split.startswith("dev") and size > 0), None)
    if dev is None or model.config.num_labels < 2:
        return out  # regression: no classes to separate
    feats, labels = cls_features(model, data.read_split(ref, dev), batch_size, pad_token_id)
    if torch.unique(labels).numel() >= 2:
        out["separability_fisher"] = fisher_criterion(feats, labels)
        out["separability_silhouette"] = silhouette_score(feats, labels, metric="cosine")
    return out


def size_metrics(model_dir: Path) -> dict[str, float]:
    """Weights file size as stored, and compressed (what zeros save when shipped zipped)."""
    weights = Path(model_dir) / "model.safetensors"
    raw = weights.read_bytes()
    return {
        "size_mb": len(raw) / 1e6,
        "size_compressed_mb": len(zlib.compress(raw, level=1)) / 1e6,
    }


def latency_metrics(model: nn.Module, batch_sizes: tuple[int, ...], seq_len: int, repeats: int,
                    threads: int) -> dict[str, float]:
    """`latency_ms_b<B>` for each batch size, on `threads` CPU threads (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        seq_len = min(seq_len, model.config.max_position_embeddings)
        return {f"latency_ms_b{b}": latency_ms(model, b, seq_len, repeats, model.config.vocab_size)
                for b in batch_sizes}
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class Evaluation:
    """What evaluating one model gives: its metrics and its per-example predictions."""

    metrics: dict[str, float]  # MLflow metric names
    predictions: pa.Table  # predictions_table's columns


def evaluate_model(model_dir: str, ref: data.DatasetRef, *, batch_size: int,
                   latency_batch_sizes: tuple[int, ...], latency_seq_len: int, latency_repeats: int,
                   latency_threads: int) -> Evaluation:
    """All metrics of one saved model as a flat dict, and its predictions on every evaluated
    split; the arguments are the fields of the config's `evaluation` block."""
    model = pretrained.load_saved(model_dir)
    pad = getattr(model.config, "pad_token_id", 0) or 0
    predictions = {split: predict(model, data.read_split(ref, split), batch_size, pad)
                   for split, size in ref.sizes if split != "train" and size > 0}
    results = task_metrics(ref, {split: (p.pred, p.gold) for split, p in predictions.items()})
    results |= {
        "encoder_sparsity": encoder_sparsity(model),
        "model_nonzero_params": float(model_nonzero_params(model)),
        "model_params": float(count_params(model)),
    }
    results |= size_metrics(Path(model_dir))
    results |= analysis_metrics(model, ref, batch_size, pad)
    results |= latency_metrics(model, latency_batch_sizes, latency_seq_len, latency_repeats, latency_threads)
    return Evaluation(results, predictions_table(predictions))


def evaluate(model_dir: str, ref: data.DatasetRef, *, batch_size: int, latency_batch_sizes: tuple[int, ...],
             latency_seq_len: int, latency_repeats: int, latency_threads: int) -> dict[str, float]:
    """All metrics of one saved model as a flat dict (MLflow metric names): evaluate_model's."""
    return evaluate_model(model_dir, ref, batch_size=batch_size, latency_batch_sizes=latency_batch_sizes,
                          latency_seq_len=latency_seq_len, latency_repeats=latency_repeats,
                          latency_threads=latency_threads).metrics
