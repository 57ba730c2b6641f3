"""Task data, the one road in: `from infra import data` and call load_raw / validate / split /
prepare / load_ref / read_split / batches.

The code lives in modules along the data's own seams: sources.py (load a task's rows
from a packaged CSV, a file or a benchmark; glue_original.py reads GLUE's original download
for it), checks.py (validate them; class values or class names), splits.py (train/dev/test and
a benchmark's evaluation sets), prepared.py (tokenised parquet named by its content hash,
read back and batched).
"""

from infra.data.prepared import (
    FORMAT_VERSION, DatasetRef, SplitName, batches, load_ref, num_batches, prepare, read_split,
)
from infra.data.checks import class_names, label_values, validate
from infra.data.sources import DataError, TaskSource, load_raw, pair_column
from infra.data.splits import SPLITS, SplitPlan, cap, model_splits, split

__all__ = [
    "FORMAT_VERSION", "SPLITS", "DataError", "DatasetRef", "SplitName", "SplitPlan", "TaskSource",
    "batches", "cap", "class_names", "label_values", "load_raw", "load_ref", "model_splits", "num_batches",
    "pair_column", "prepare", "read_split", "split", "validate",
]
