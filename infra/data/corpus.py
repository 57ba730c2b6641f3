"""Unlabelled text for a task-agnostic stage (HomoDistil): gathered, tokenised, stored by hash.

The text comes from the task's own training split (already validated and split, so dev
and test texts never leak in) and the config's `distil.corpus` sources. Like a prepared
task, a corpus is immutable parquet in a folder named by its content hash.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from infra.data import prepared
from infra.data import sources
from infra.experiment.config import CorpusSource
from infra.data.sources import DataError

CORPUS_FORMAT = 1


@dataclass(frozen=True)
class CorpusRef:
    path: str
    content_hash: str
    size: int  # texts


def _texts(source: CorpusSource) -> list[str]:
    if source.kind == "packaged":
        frame = sources.packaged_rows(source.subset, "distil.corpus")
    else:
        frame = sources.read_file(Path(source.path))
    if source.text_column not in frame.columns:
        raise DataError(f"corpus {source.path or source.subset}: no column {source.text_column!r} "
                        f"(columns: {list(frame.columns)}); set `text_column`")
    texts = frame[source.text_column].dropna().astype(str)
    texts = texts[texts.str.strip() != ""].tolist()
    return texts[: source.max_texts] if source.max_texts else texts


def gather(corpus: tuple[CorpusSource, ...], task_texts: list[str], max_texts: int | None,
           seed: int = 0) -> list[str]:
    """The task's texts first, then each source's; a seeded sample when over `max_texts`."""
    texts = list(task_texts)
    for source in corpus:
        texts.extend(_texts(source))
    if not texts:
        raise DataError("the distillation corpus is empty: enable `task_texts` or add a `corpus` source")
    if max_texts and len(texts) > max_texts:
        keep = np.sort(np.random.default_rng(seed).choice(len(texts), max_texts, replace=False))
        texts = [texts[i] for i in keep]
    return texts


def prepare_corpus(texts: list[str], tokenizer: Any, max_length: int, out_root: Path, name: str,
                   chunk: bool = False) -> CorpusRef:
    """Tokenise `texts` into out_root/<name>-corpus-<hash[:12]>/train.parquet (reused when there).
    `chunk`: a text longer than max_length becomes several examples of at most max_length tokens
    (each with its own [CLS]/[SEP]) instead of being cut."""
    types = "token_type_ids" in getattr(tokenizer, "model_input_names", ())
    enc = tokenizer(texts, truncation=True, max_length=max_length, padding=False,
                    return_token_type_ids=types, return_overflowing_tokens=chunk)
    columns = {"input_ids": pa.array(enc["input_ids"], pa.list_(pa.int32()))}
    if types:
        columns["token_type_ids"] = pa.array(enc["token_type_ids"], pa.list_(pa.int8()))
    table = pa.table(columns)
    digest = _hash(table)
    final = Path(out_root) / f"{name}-corpus-{digest[:12]}"
    if not (final / "meta.json").is_file():
        meta = {"format": CORPUS_FORMAT, "content_hash": digest, "size": table.num_rows,
                "tokenizer": getattr(tokenizer, "name_or_path", ""), "max_length": max_length}
        prepared.write_atomically({"train": table}, meta, final)
    return load_corpus(str(final))


def _hash(table: pa.Table) -> str:
    h = hashlib.sha256(f"corpus-{CORPUS_FORMAT}".encode())
    prepared.hash_lists(h, table.column("input_ids"), "<i4")
    if "token_type_ids" in table.column_names:
        prepared.hash_lists(h, table.column("token_type_ids"), "<i1")
    return h.hexdigest()


def load_corpus(path: str) -> CorpusRef:
    """The ref of a prepared corpus, its content checked against its hash."""
    root = Path(path)
    try:
        meta = json.loads((root / "meta.json").read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{root} is not a prepared corpus ({exc}); prepare it again") from exc
    table = read_corpus(path)
    if _hash(table) != meta.get("content_hash"):
        raise DataError(f"{root}: content does not match its hash; delete the dir and prepare it again")
    return CorpusRef(str(root), meta["content_hash"], table.num_rows)


def read_corpus(path: str) -> pa.Table:
    """input_ids [, token_type_ids] of every text; no labels."""
    return prepared.read_table(Path(path) / "train.parquet")


def task_texts(table: pa.Table) -> list[str]:
    """The text column of a prepared task split (pairs are joined with a space)."""
    texts = table.column("text").to_pylist()
    if "text_pair" in table.column_names:
        texts = [f"{a} {b}" for a, b in zip(texts, table.column("text_pair").to_pylist())]
    return texts


__all__ = ["CorpusRef", "gather", "load_corpus", "prepare_corpus", "read_corpus", "task_texts"]
