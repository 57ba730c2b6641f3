"""GLUE's original download: the folders `download_glue_data.py` writes (glue_data/SST-2/train.tsv, ...).

The files are read the way the hub's own GLUE builder (glue.py in huggingface/datasets) read these
very files to make nyu-mll/glue, so a task gives the same rows, columns and label ids in either
layout: tab-separated with no quoting (texts hold unbalanced quote characters), columns picked
by header name (CoLA's train/dev files have no header: source, label, original label, sentence),
class names ("entailment") mapped to the hub's class index, numbers kept as they are, and rows with
a missing field or an empty label skipped, as the builder skipped them (the older QQP release
has a few lines broken by newlines inside questions). GLUE's test files carry no labels and are
not read.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from infra.data.benchmarks import BenchmarkTask

log = logging.getLogger(__name__)

_SPLITS = (("train", "train.tsv"), ("validation", "dev.tsv"))


class GlueFileError(ValueError):
    """A file of GLUE's original layout is missing or malformed; the message names the file and line."""


@dataclass(frozen=True)
class Layout:
    folder: str  # the task's folder as the download names it, e.g. "SST-2"
    columns: tuple[tuple[str, str], ...]  # (hub column, file column) of each text
    label: str  # the file column holding the label (a class name, a class index or a score)
    files: tuple[tuple[str, str], ...] = _SPLITS  # (hub split, file name)
    header: tuple[str, ...] = ()  # the column names of a file without a header line


LAYOUTS: dict[str, Layout] = {  # registry name -> layout; hub columns as in infra/data/benchmarks.py
    "cola": Layout("CoLA", (("sentence", "sentence"),), "label",
                   header=("source", "label", "original_label", "sentence")),
    "sst2": Layout("SST-2", (("sentence", "sentence"),), "label"),
    "mrpc": Layout("MRPC", (("sentence1", "#1 String"), ("sentence2", "#2 String")), "Quality"),
    "qqp": Layout("QQP", (("question1", "question1"), ("question2", "question2")), "is_duplicate"),
    "stsb": Layout("STS-B", (("sentence1", "sentence1"), ("sentence2", "sentence2")), "score"),
    "mnli": Layout("MNLI", (("premise", "sentence1"), ("hypothesis", "sentence2")), "gold_label",
                   files=(("train", "train.tsv"), ("validation_matched", "dev_matched.tsv"),
                          ("validation_mismatched", "dev_mismatched.tsv"))),
    "qnli": Layout("QNLI", (("question", "question"), ("sentence", "sentence")), "label"),
    "rte": Layout("RTE", (("sentence1", "sentence1"), ("sentence2", "sentence2")), "label"),
    "wnli": Layout("WNLI", (("sentence1", "sentence1"), ("sentence2", "sentence2")), "label"),
}


def task_dir(root: Path, task: BenchmarkTask) -> Path | None:
    """The task's folder when `root` is a glue_data folder holding it, or is that folder itself.

    Names are matched exactly (on a case-insensitive disk `cola/` would pass for `CoLA/`)."""
    layout = LAYOUTS.get(task.name) if task.benchmark == "glue" else None
    if layout is None or not root.is_dir():
        return None
    candidates = [root / layout.folder] if layout.folder in {p.name for p in root.iterdir()} else []
    if root.resolve().name == layout.folder:  # `path` names the task's folder itself
        candidates.append(root)
    for folder in candidates:  # a hub-layout copy has validation files, GLUE's original dev files
        if (folder / "train.tsv").is_file() and not any(folder.glob("validation*")):
            return folder
    return None


def hint(root: Path, task: BenchmarkTask | None) -> str:
    """Where the task's files belong when `root` looks like a glue_data folder but lacks them ("" if not)."""
    layout = LAYOUTS.get(task.name) if task is not None and task.benchmark == "glue" else None
    if layout is None or not {lay.folder for lay in LAYOUTS.values()} & {p.name for p in root.iterdir()}:
        return ""
    return (f"; in GLUE's original layout (download_glue_data.py) {task.key} needs "
            f"{root / layout.folder}/{', '.join(name for _, name in layout.files)}")


def read_task(folder: Path, task: BenchmarkTask, splits: tuple[str, ...]) -> pd.DataFrame:
    """Rows of the given hub splits with the hub's columns (texts, label, idx) and glue_split.

    idx is the row's number in its file, as on the hub (except MRPC, whose hub idx counts the
    undivided msr_paraphrase_train.txt). Labels are int64 class indices, float64 for STS-B."""
    layout = LAYOUTS[task.name]
    files = dict(layout.files)
    parts = []
    for split in splits:
        if split not in files:
            raise GlueFileError(f"{folder}: GLUE's original {layout.folder} folder has no file for split "
                                f"{split!r}; it has {[name for _, name in layout.files]}")
        path = folder / files[split]
        if not path.is_file():
            raise GlueFileError(f"{path} not found; GLUE's original {layout.folder} folder holds "
                                f"{', '.join(name for _, name in layout.files)} (from download_glue_data.py)")
        parts.append(_read_file(path, layout, task).assign(glue_split=split))
    return pd.concat(parts, ignore_index=True)


def _rows(path: Path, layout: Layout) -> tuple[tuple[str, ...], list[tuple[int, list[str]]]]:
    """The header and the (line number, fields) of each non-blank row."""
    # utf-8-sig: MRPC's files start with the byte-order mark of Microsoft's original release.
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = layout.header or tuple(next(reader, ()))
        rows = [(reader.line_num, row) for row in reader if row]
    return header, rows


def _columns(path: Path, layout: Layout, header: tuple[str, ...]) -> tuple[list[int], int]:
    wanted = [file_col for _, file_col in layout.columns] + [layout.label]
    missing = [c for c in wanted if c not in header]
    if missing:
        raise GlueFileError(f"{path}: column(s) {missing} missing from the header {list(header)}; expected "
                            f"GLUE's original {layout.folder} file (as download_glue_data.py writes it)")
    return [header.index(c) for c in wanted[:-1]], header.index(layout.label)


def _read_file(path: Path, layout: Layout, task: BenchmarkTask) -> pd.DataFrame:
    header, rows = _rows(path, layout)
    texts, label = _columns(path, layout, header)
    width = max(texts + [label]) + 1
    kept = [(n, i, row) for i, (n, row) in enumerate(rows) if len(row) >= width and row[label] != ""]
    if len(kept) < len(rows):
        skipped = sorted({n for n, _ in rows} - {n for n, _, _ in kept})
        log.warning("%s: skipped %d row(s) with a missing field or an empty label (lines %s%s), as "
                    "the hub's GLUE builder does", path, len(skipped), skipped[:5],
                    " ..." if len(skipped) > 5 else "")
    if not kept:
        raise GlueFileError(f"{path}: no usable rows; each needs the columns {list(header)}"
                            + (" (this file has no header line)" if layout.header else ""))
    frame = pd.DataFrame({hub: [row[i] for _, _, row in kept] for (hub, _), i in zip(layout.columns, texts)})
    frame["label"] = [_label(row[label], task, f"{path} line {n}", layout) for n, _, row in kept]
    frame["idx"] = [i for _, i, _ in kept]
    return frame.astype({"label": "float64" if task.is_regression else "int64", "idx": "int64"})


def _label(value: str, task: BenchmarkTask, where: str, layout: Layout) -> int | float:
    names = task.label_names
    if not names:  # STS-B: a similarity score from 0 to 5
        try:
            score = float(value)
        except ValueError:
            score = math.nan
        if not math.isfinite(score):
            raise GlueFileError(f"{where}: score {value!r} in column {layout.label!r} is not a number")
        return score
    if value in names:
        return names.index(value)  # the hub's class index, so both layouts give the same ids
    if value.isdigit() and int(value) < len(names):
        return int(value)
    hint = f" ({layout.folder}'s train/dev files have no header line)" if layout.header else ""
    raise GlueFileError(f"{where}: label {value!r} in column {layout.label!r} is not a class of {task.key}: "
                        f"use one of {list(names)} or 0..{len(names) - 1}{hint}")
