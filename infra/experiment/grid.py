"""Expand an experiment's grid into jobs, each named by a hash of its resolved config.

The `job_id` names what users see: the job's Prefect task run, its MLflow run and its
registry tags. It holds the job's own settings only, so a pruning job keeps its id when
its teacher changes. One run of a job is named by its `run_key`: the job_id and everything
upstream of the result (data, the models it starts from, the pretrained weights' bytes,
the code and library versions). The run key decides the cached result, the model folder
and the Ray Train checkpoint folder, so a rerun finds its own checkpoints, never a
stranger's, and never a model trained from another teacher.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from infra.experiment.config import ComputeSpec, ExperimentConfig, ModelSpec, TaskSpec, TrainSpec
from infra.experiment import provenance
from pruning.methods import distiller_options, has_distiller

TEACHER_METHOD = "dense"


@dataclass(frozen=True)
class JobSpec:
    """One training job: the teacher of a task, or one grid point."""

    job_id: str
    experiment: str
    task: str
    method: str
    sparsity: float
    seed: int
    options: tuple[tuple[str, object], ...]
    train: TrainSpec
    model: ModelSpec
    compute: ComputeSpec
    stage: Literal["task", "distil"] = "task"  # "distil": a two-stage method's task-agnostic stage

    @property
    def is_teacher(self) -> bool:
        return self.method == TEACHER_METHOD and self.stage == "task"

    @property
    def label(self) -> str:
        """Human-readable name, e.g. 'gmp-s70-seed0' or 'gmp-s70-seed0-allocation=global'."""
        stage = "-distil" if self.stage == "distil" else ""
        base = "teacher" if self.is_teacher else f"{self.method}{stage}-s{round(self.sparsity * 100):02d}"
        extra = "".join(f"-{key}={value}" for key, value in self.options)
        return f"{base}-seed{self.seed}{extra}"

    def resolved(self) -> dict[str, object]:
        """Everything that determines the job's result, as plain JSON-able data."""
        return {
            "task": self.task,
            "method": self.method,
            "sparsity": self.sparsity,
            "seed": self.seed,
            "options": dict(self.options),
            "train": self.train.model_dump(mode="json"),
            "model": self.model.model_dump(mode="json"),
            "world_size": self.compute.num_workers,
        } | ({"stage": self.stage} if self.stage != "task" else {}) | (
            # bf16 changes the result; fp32, the precision every job trained in before, keeps the ids.
            {"precision": self.compute.precision} if self.compute.precision != "fp32" else {})


def job_hash(resolved: dict[str, object], length: int = 12) -> str:
    """Short, stable hash of a resolved job config (key order does not matter)."""
    canonical = json.dumps(resolved, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:length]


def run_key(job_id: str, *, data_hash: str, upstream: Sequence[str], pretrained: str) -> str:
    """The name of one run of a job: its `job_id` and everything upstream of its result.

    `upstream`: the runs it starts from (teacher, distilled student), each naming its own
    upstream in turn; `pretrained`: the pretrained model's content fingerprint, so new weights
    in a directory of the same name train again.
    """
    return job_hash({"job_id": job_id, "data_hash": data_hash, "upstream": list(upstream),
                     "pretrained": pretrained, "code_version": provenance.code_version(),
                     "libraries": provenance.library_versions()}, length=16)


def _make_job(cfg: ExperimentConfig, task: TaskSpec, method: str, sparsity: float, seed: int,
              options: tuple[tuple[str, object], ...], train: TrainSpec, stage: str = "task") -> JobSpec:
    draft = JobSpec("", cfg.name, task.name, method, sparsity, seed, options, train, cfg.model,
                    cfg.compute, stage)
    # The task's data settings belong in the id too: same method on other data is another job.
    resolved = draft.resolved() | {"data": task.model_dump(mode="json")}
    if stage == "distil":  # the student a shared stage makes is the first seed's own: one id
        resolved |= {"corpus": cfg.distil.model_dump(mode="json", exclude={"train", "per_seed"})}
    elif has_distiller(method) and not cfg.distil.per_seed:  # starts from the first seed's student
        resolved |= {"student_seed": cfg.grid.seeds[0]}
    return replace(draft, job_id=job_hash(resolved))


def distil_job(cfg: ExperimentConfig, task: TaskSpec, job: JobSpec) -> JobSpec | None:
    """The task-agnostic stage a grid job starts from (None for one-stage methods).

    It keeps only the first stage's options, so grid points that differ in task-stage
    options only (e.g. HomoDistil's `kd_weight`) share one distilled student; with
    `distil.per_seed` false every seed shares the first seed's too.
    """
    if not has_distiller(job.method):
        return None
    own = distiller_options(job.method)
    options = tuple((k, v) for k, v in job.options if k in own)
    seed = job.seed if cfg.distil.per_seed else cfg.grid.seeds[0]
    return _make_job(cfg, task, job.method, job.sparsity, seed, options, cfg.distil.train, "distil")


def teacher_job(cfg: ExperimentConfig, task: TaskSpec) -> JobSpec:
    """The dense fine-tuning job whose result every grid point of `task` starts from or distils."""
    return _make_job(cfg, task, TEACHER_METHOD, 0.0, cfg.grid.seeds[0], (), cfg.teacher)


def _option_combinations(cfg: ExperimentConfig, method: str) -> list[tuple[tuple[str, object], ...]]:
    options = cfg.grid.options.get(method, {})
    keys = sorted(options)
    return [tuple(zip(keys, values)) for values in itertools.product(*(options[k] for k in keys))]


def expand_grid(cfg: ExperimentConfig, task: TaskSpec) -> list[JobSpec]:
    """All grid points of one task, in a stable order (method, sparsity, options, seed)."""
    jobs = []
    for method in cfg.grid.methods:
        for sparsity in cfg.grid.sparsities:
            for options in _option_combinations(cfg, method):
                for seed in cfg.grid.seeds:
                    jobs.append(_make_job(cfg, task, method, sparsity, seed, options, cfg.prune_for(method)))
    return jobs
