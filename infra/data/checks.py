"""Checks of a task's loaded rows before any work, and its classes: numbers or names.

A label column holds class values (0/1, 1..5 stars) or class names ("positive", "sci.space").
Names become class indexes in a stable order (the task's `labels`, else sorted) and travel
with the prepared data to the model's config (`id2label`), so a saved model predicts names.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from infra.data.sources import DataError, TaskSource, _int_labels, is_regression


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


def _named(labels: pd.Series) -> bool:
    """Whether a label column holds class names: some value is text that is not a number."""
    text = labels.map(lambda v: isinstance(v, str) and bool(v.strip()))
    return bool((text & pd.to_numeric(labels, errors="coerce").isna()).any())


def class_names(frame: pd.DataFrame, source: TaskSource) -> tuple[str, ...]:
    """The names of a task whose labels are names ("positive", "sci.space") in class-index order:
    the task's `labels` when it lists names, else sorted. () when the labels are numbers, for
    regression, and for a benchmark (its registry maps its own names to its class indexes)."""
    if source.task is not None or is_regression(source):
        return ()
    if source.labels is not None:  # names listed in the config fix the order; numbers mean no names
        return tuple(source.labels) if all(isinstance(v, str) for v in source.labels) else ()
    if not _named(frame["label"]):
        return ()
    return tuple(sorted(frame["label"].dropna().astype(str).unique()))


def index_names(frame: pd.DataFrame, names: tuple[str, ...]) -> pd.DataFrame:
    """The frame with each class name in its label column replaced by the name's class index."""
    index = {name: i for i, name in enumerate(names)}
    return frame.assign(label=frame["label"].astype(str).map(index).astype("int64"))


def label_values(frame: pd.DataFrame, source: TaskSource) -> tuple[int, ...]:
    """The class values in order: index i of the classifier is label_values[i]; () for regression.
    Named classes are their indexes (see class_names)."""
    if is_regression(source):
        return ()
    if names := class_names(frame, source):
        return tuple(range(len(names)))
    values = source.labels if source.labels is not None else frame["label"].unique()
    return tuple(sorted(int(v) for v in values))  # sorted: (1, 0) must not swap the classes


def _check_scores(frame: pd.DataFrame, source: TaskSource) -> None:
    bad = ~np.isfinite(pd.to_numeric(frame["label"], errors="coerce").astype("float64"))
    if bad.any():
        raise DataError(f"task {source.name!r}: non-numeric regression target(s) in column "
                        f"{source.label_column!r}: {_describe(frame['label'][bad])}; fix or drop them")


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
    if is_regression(source):
        return _check_scores(frame, source)
    if names := class_names(frame, source):
        return _check_names(frame, source, names)
    numeric, bad = _int_labels(frame["label"])
    if bad.any():
        raise DataError(f"task {source.name!r}: non-integer labels in column {source.label_column!r}: "
                        f"{_describe(frame['label'][bad])}; map them to integers, or give class names "
                        "(list them in the task's `labels`, or leave `labels` out)")
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


def _check_names(frame: pd.DataFrame, source: TaskSource, names: tuple[str, ...]) -> None:
    """Named classes: no empty label, no name outside the task's `labels`, at least 2 classes."""
    text = frame["label"].astype(str)
    empty = frame["label"].isna() | (text.str.strip() == "")
    if empty.any():
        rows = frame.index[empty].tolist()
        raise DataError(f"task {source.name!r}: {len(rows)} row(s) with an empty label in column "
                        f"{source.label_column!r} (0-based data rows {rows[:5]}); drop or fill them")
    if len(set(names)) != len(names) or len(names) < 2:
        raise DataError(f"task {source.name!r}: class names {list(names)} must be >= 2 distinct names")
    unexpected = ~text.isin(names)
    if unexpected.any():
        raise DataError(f"task {source.name!r}: unexpected label(s) in column {source.label_column!r}: "
                        f"{_describe(frame['label'][unexpected])}; allowed {list(names)}: fix the data "
                        "or the task's `labels`")
