"""The folders under PRUNEGRID_HOME (Settings.home), named here and nowhere else.

    <home>/data/<task>-<hash12>/            prepared task data (infra.data.prepared)
    <home>/data/<task>-corpus-<hash12>/     a distillation corpus (infra.data.corpus)
    <home>/models/<job_id>-<run key8>/      a trained model (infra.experiment.jobs)
    <home>/models/<alias>/                  a packaged checkpoint converted once (infra.models.pretrained)
    <home>/ray_results/<job_id>-<run key8>/ Ray Train's run folders: an unfinished run's checkpoints
    <home>/results/                         cached task results (tasks.cache)
    <home>/teacher_outputs/<data hash12>-<hash12>/  a frozen teacher's outputs per example (infra.train.teacher_cache)
    <home>/stack/                           the local servers' pids, logs and stores (infra.stack)
    <home>/locks/<experiment>.lock          the lock of the driver running an experiment (infra.experiment.locks)
    <home>/bench/, <home>/bench-<name>/     the benchmarks' scratch (bench/), with its own data/, models/

A home written by an earlier version keeps working: these names must not change. Paths
only; nothing here creates a folder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

HomeFolder = Callable[[str | Path], Path]


def _folder(name: str, doc: str) -> HomeFolder:
    """The function `<name>_dir(home)`: the folder `name` under the home, documented by `doc`."""

    def folder(home: str | Path) -> Path:
        return Path(home) / name

    folder.__name__ = folder.__qualname__ = f"{name}_dir"
    folder.__doc__ = doc
    return folder


data_dir = _folder("data", "Prepared task data and corpora, each in a folder named by its content hash.")
models_dir = _folder("models", "Trained models (`<job_id>-<run key8>`) and converted packaged checkpoints (`<alias>`).")
ray_results_dir = _folder("ray_results", "Ray Train's storage_path: one run folder per job, holding its checkpoints.")
results_dir = _folder("results", "Cached task results (small JSON references to the models and data above).")
stack_dir = _folder("stack", "The local servers' files (infra.stack.local_stack).")
locks_dir = _folder("locks", "One lock file per experiment, held by the driver that runs it.")
teacher_outputs_dir = _folder("teacher_outputs", "Frozen teachers' outputs per example, one folder per "
                              "teacher, train split and what is kept.")


def bench_dir(home: str | Path, name: str | None = None) -> Path:
    """Scratch of a benchmark: `bench/`, or `bench-<name>/` for one that keeps its own."""
    return Path(home) / ("bench" if name is None else f"bench-{name}")
