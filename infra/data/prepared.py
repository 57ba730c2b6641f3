"""Prepared task data: tokenise the splits, store them as parquet named by their content hash,
read them back, and batch them for training and evaluation.

Everything downstream receives a small `DatasetRef` (path + content hash) and reads the
prepared parquet files through `read_split`, so a prepared directory is immutable, named by
its hash, and shared safely between runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from infra.data.benchmarks import CLASSIFICATION_METRICS, CLASSIFICATION_SCORE
from infra.data.checks import class_names, index_names, label_values, validate
from infra.data.order import rank_order
from infra.data.sources import DataError, TaskSource, is_regression, load_raw
from infra.data.splits import SPLITS, SplitPlan, model_splits

log = logging.getLogger(__name__)

SplitName = Literal["train", "dev", "test"]  # benchmarks add test_mm, test_<lang>, ...
FORMAT_VERSION = 1  # bump when the on-disk layout or the hash recipe changes


@dataclass(frozen=True)
class DatasetRef:
    task: str
    path: str
    content_hash: str
    num_labels: int  # 1 for regression
    label_values: tuple[int, ...]  # () for regression
    sizes: tuple[tuple[str, int], ...]
    metrics: tuple[str, ...] = CLASSIFICATION_METRICS  # names in infra.evaluate.metrics
    score: tuple[str, ...] = CLASSIFICATION_SCORE  # `score` is their mean
    languages: tuple[tuple[str, str], ...] = ()  # (split, language) of a cross-lingual task's eval sets
    label_names: tuple[str, ...] = ()  # class i's name when the data named its classes, else ()

    @property
    def regression(self) -> bool:
        return not self.label_values


def _evaluation(source: TaskSource) -> dict[str, Any]:
    task = source.task
    if task is None:
        return {}
    langs = [list(pair) for pair in task.split_languages]
    return {"metrics": list(task.metrics), "score": list(task.score), "languages": langs}


def _ref(task: str, root: Path, digest: str, values: tuple[int, ...], sizes, evaluation: dict,
         names: tuple[str, ...]) -> DatasetRef:
    extra = {"metrics": tuple(evaluation["metrics"]), "score": tuple(evaluation["score"]),
             "languages": tuple(tuple(p) for p in evaluation["languages"])} if evaluation else {}
    return DatasetRef(task, str(root.resolve()), digest, len(values) or 1, values, tuple(sizes),
                      **extra, label_names=names)


# ---------------------------------------------------------------- tokenising and storing


def _labels(frame: pd.DataFrame, label_values: tuple[int, ...]) -> pa.Array:
    if not label_values:  # regression: the target itself, float32 like the model's output
        return pa.array(frame["label"].astype("float32").tolist(), pa.float32())
    # The stored label is the class index, so any label values (e.g. 1..5 stars) fit a classifier head.
    index = {v: i for i, v in enumerate(label_values)}
    return pa.array([index[int(v)] for v in frame["label"]], pa.int64())


def _encode(frame: pd.DataFrame, label_values: tuple[int, ...], tokenizer: Any, max_length: int) -> pa.Table:
    texts = frame["text"].tolist()
    pairs = frame["text_pair"].tolist() if "text_pair" in frame.columns else None
    # Decided per tokenizer, not per split, so every split has the same columns (and an empty
    # split, which the tokenizer refuses to encode, still gets them).
    types = "token_type_ids" in getattr(tokenizer, "model_input_names", ())
    enc = {"input_ids": [], "token_type_ids": []} if not texts else tokenizer(
        texts, pairs, truncation=True, max_length=max_length, padding=False, return_token_type_ids=types)
    columns: dict[str, pa.Array] = {"text": pa.array(texts, pa.string())}
    if pairs is not None:
        columns["text_pair"] = pa.array(pairs, pa.string())
    columns["input_ids"] = pa.array(enc["input_ids"], pa.list_(pa.int32()))
    if types:
        columns["token_type_ids"] = pa.array(enc["token_type_ids"], pa.list_(pa.int8()))
    columns["label"] = _labels(frame, label_values)
    return pa.table(columns)


def hash_lists(h: Any, column: pa.ChunkedArray, dtype: str) -> None:
    """Feed a list column (token ids) to hash `h`: the row lengths, then every value as `dtype`."""
    lists = column.combine_chunks()
    h.update(np.asarray(lists.value_lengths().to_numpy(zero_copy_only=False), dtype="<i8").tobytes())
    h.update(np.asarray(lists.flatten().to_numpy(zero_copy_only=False), dtype=dtype).tobytes())


def _content_hash(tables: dict[str, pa.Table], label_values: tuple[int, ...], evaluation: dict,
                  names: tuple[str, ...] = ()) -> str:
    """sha256 of what training and evaluation see: label values (a benchmark's metrics, the class
    names), then per split its name, size, token ids and labels."""
    # A plain task's header is what it was before benchmarks and class names existed, so its
    # hash is unchanged.
    header = {"format": FORMAT_VERSION, "label_values": list(label_values)} | (
        {"evaluation": evaluation} if evaluation else {}) | ({"label_names": list(names)} if names else {})
    h = hashlib.sha256(json.dumps(header).encode())
    for name, table in tables.items():
        h.update(f"|{name}:{table.num_rows}|".encode())
        for column, dtype in (("input_ids", "<i4"), ("token_type_ids", "<i1")):
            if column in table.column_names:
                h.update(column.encode())
                hash_lists(h, table.column(column), dtype)
        dtype = "<f8" if pa.types.is_floating(table.schema.field("label").type) else "<i8"
        h.update(np.asarray(table.column("label").to_numpy(), dtype=dtype).tobytes())
    return h.hexdigest()


def write_atomically(tables: dict[str, pa.Table], meta: dict[str, Any], final: Path) -> None:
    """<name>.parquet per table and meta.json into `final`, which appears whole or not at all."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        for name, table in tables.items():
            pq.write_table(table, tmp / f"{name}.parquet")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide the data from workers running as other users
        os.rename(tmp, final)  # readers see the whole directory or none of it
    except OSError:
        if not (final / "meta.json").is_file():  # not just a concurrent writer that got there first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _reuse(final: Path, digest: str) -> DatasetRef | None:
    if not final.exists():
        return None
    try:
        ref = load_ref(str(final))
    except DataError as exc:
        log.warning("rebuilding damaged prepared dataset: %s", exc)
        trash = final.with_name(f".{final.name}.damaged-{uuid.uuid4().hex[:8]}")
        os.rename(final, trash)
        shutil.rmtree(trash, ignore_errors=True)
        return None
    if ref.content_hash != digest:
        raise DataError(f"{final} holds other data with the same hash prefix; move it away and rerun")
    return ref


def prepare(source: TaskSource, spec: SplitPlan, tokenizer: Any, max_length: int, out_root: Path,
            allow_hub: bool = False) -> DatasetRef:
    """load_raw -> validate -> split -> tokenise -> parquet under out_root/<task>-<hash[:12]>/ (reused
    when already there)."""
    limit = getattr(tokenizer, "model_max_length", None) or 10**9
    if not 2 < max_length <= limit:
        raise DataError(f"max_length {max_length} must be > 2 and <= the tokenizer's limit {limit}")
    frame = load_raw(source, allow_hub)
    validate(frame, source)
    values, names = label_values(frame, source), class_names(frame, source)
    if names:  # named classes are stored, split and trained as their indexes
        frame = index_names(frame, names)
    tables = {name: _encode(part, values, tokenizer, max_length)
              for name, part in model_splits(frame, source, spec).items()}
    evaluation = _evaluation(source)
    digest = _content_hash(tables, values, evaluation, names)
    final = Path(out_root) / f"{source.name}-{digest[:12]}"
    sizes = tuple((name, table.num_rows) for name, table in tables.items())
    reused = _reuse(final, digest)
    if reused is not None:
        return reused
    meta = {"format": FORMAT_VERSION, "task": source.name, "content_hash": digest,
            "label_values": list(values), "sizes": dict(sizes),
            "tokenizer": getattr(tokenizer, "name_or_path", ""), "max_length": max_length,
            "source": asdict(source), "split": asdict(spec)} | (
            {"evaluation": evaluation, "regression": is_regression(source)} if evaluation else {}) | (
            {"label_names": list(names)} if names else {})
    write_atomically(tables, meta, final)
    return _ref(source.name, final, digest, values, sizes, evaluation, names)


# ---------------------------------------------------------------- reading back


def read_table(path: Path) -> pa.Table:
    """One prepared parquet file; DataError (delete and prepare again) when missing or corrupt."""
    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"prepared file {path} is missing or corrupt ({exc}); delete {path.parent} "
                        "and prepare the data again") from exc


def load_ref(path: str) -> DatasetRef:
    """Rebuild the ref of a prepared dir, checking every file against the hash in meta.json."""
    root = Path(path)
    try:
        meta = json.loads((root / "meta.json").read_text())
        task, digest = str(meta["task"]), str(meta["content_hash"])
        values = tuple(int(v) for v in meta["label_values"])
        names = [str(name) for name in meta["sizes"]]
        evaluation = meta.get("evaluation", {})
        classes = tuple(str(name) for name in meta.get("label_names", ()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{root} is not a prepared dataset (meta.json missing or invalid: {exc}); "
                        "run prepare() to create it") from exc
    if not set(SPLITS) <= set(names):
        raise DataError(f"{root}: meta.json lists splits {names}, not {list(SPLITS)}; prepare it again")
    tables = {name: read_table(root / f"{name}.parquet") for name in names}
    try:
        intact = _content_hash(tables, values, evaluation, classes) == digest
    except (KeyError, ValueError, pa.ArrowException):  # a column missing or of the wrong type
        intact = False
    if not intact:
        raise DataError(f"{root}: content does not match its hash {digest[:12]}; delete the dir and "
                        "prepare the data again")
    sizes = tuple((name, tables[name].num_rows) for name in names)
    return _ref(task, root, digest, values, sizes, evaluation, classes)


def read_split(ref: DatasetRef, split: str) -> pa.Table:
    """One prepared split: text columns, input_ids, [token_type_ids], label (class index, or the
    float target of a regression task)."""
    expected = dict(ref.sizes)
    if split not in expected:
        raise DataError(f"split {split!r} unknown; use one of {list(expected)}")
    table = read_table(Path(ref.path) / f"{split}.parquet")
    if table.num_rows != expected[split]:
        raise DataError(f"{ref.path}/{split}.parquet has {table.num_rows} rows, its ref says "
                        f"{expected[split]}; delete the dir and prepare the data again")
    return table


# ---------------------------------------------------------------- batching


def num_batches(table: pa.Table, batch_size: int, world_size: int = 1, drop_last: bool = False) -> int:
    """Batches each rank gets; every rank gets the same number, so collective ops never wait forever."""
    per_rank = table.num_rows // world_size
    return per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)


def _padded(column: pa.ChunkedArray, idx: np.ndarray, pad: int) -> tuple[torch.Tensor, np.ndarray]:
    rows = column.take(pa.array(idx)).to_pylist()
    lengths = np.array([len(r) for r in rows])
    out = np.full((len(rows), int(lengths.max())), pad, dtype=np.int64)  # [B, T], T = longest in batch
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return torch.from_numpy(out), lengths


def batches(table: pa.Table, batch_size: int, *, shuffle: bool, seed: int, epoch: int = 0, rank: int = 0,
            world_size: int = 1, pad_token_id: int = 0, drop_last: bool = False, length_buckets: bool = False,
            example_ids: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Dynamically padded batches: input_ids, attention_mask, [token_type_ids] [B, T] (long), labels
    [B] (long; float for regression); the same order for the same (seed, epoch), a disjoint shard per rank.

    `length_buckets`: examples of similar length share batches (infra.data.order), so batches
    pad less; `example_ids`: each batch also carries "example_ids" [B] (long), the examples'
    rows in `table` (a model's forward must not receive them).
    """
    lengths = table.column("input_ids").combine_chunks().value_lengths().to_numpy(
        zero_copy_only=False) if length_buckets else None
    order = rank_order(table.num_rows, batch_size, shuffle=shuffle, seed=seed, epoch=epoch, rank=rank,
                       world_size=world_size, drop_last=drop_last, lengths=lengths)
    # A corpus for task-agnostic distillation has no label column: its batches carry none.
    labels = table.column("label").to_numpy() if "label" in table.column_names else None
    label_dtype = np.float32 if labels is not None and np.issubdtype(labels.dtype, np.floating) else np.int64
    has_types = "token_type_ids" in table.column_names
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        input_ids, lengths = _padded(table.column("input_ids"), idx, pad_token_id)
        mask = torch.from_numpy(np.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long()
        batch = {"input_ids": input_ids, "attention_mask": mask}
        if has_types:
            batch["token_type_ids"] = _padded(table.column("token_type_ids"), idx, 0)[0]
        if labels is not None:
            batch["labels"] = torch.from_numpy(labels[idx].astype(label_dtype))
        if example_ids:
            batch["example_ids"] = torch.from_numpy(idx.astype(np.int64))
        yield batch
