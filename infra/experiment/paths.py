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

from pathlib import Path


def data_dir(home: str | Path) -> Path:
    """Prepared task data and corpora, each in a folder named by its content hash."""
    return Path(home) / "data"


def models_dir(home: str | Path) -> Path:
    """Trained models (`<job_id>-<run key8>`) and converted packaged checkpoints (`<alias>`)."""
    return Path(home) / "models"


def ray_results_dir(home: str | Path) -> Path:
    """Ray Train's storage_path: one run folder per job, holding its checkpoints."""
    return Path(home) / "ray_results"


def results_dir(home: str | Path) -> Path:
    """Cached task results (small JSON references to the models and data above)."""
    return Path(home) / "results"


def stack_dir(home: str | Path) -> Path:
    """The local servers' files (infra.stack.local_stack)."""
    return Path(home) / "stack"


def locks_dir(home: str | Path) -> Path:
    """One lock file per experiment, held by the driver that runs it."""
    return Path(home) / "locks"


def teacher_outputs_dir(home: str | Path) -> Path:
    """Frozen teachers' outputs per example, one folder per teacher, train split and what is kept."""
    return Path(home) / "teacher_outputs"


def bench_dir(home: str | Path, name: str | None = None) -> Path:
    """Scratch of a benchmark: `bench/`, or `bench-<name>/` for one that keeps its own."""
    return Path(home) / ("bench" if name is None else f"bench-{name}")
