"""How the flow runs one grid's training and evaluation tasks: cached, refreshed, side by side.

A cached result is only a reference: when its model folder was deleted since, the job runs
again (`refresh_cache`). Grid jobs run as many at a time as the cluster holds
(`cluster.run_window`); a failed job is recorded and spares the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import Task
from prefect.futures import PrefectFuture

from infra.data import DatasetRef
from infra.data.corpus import CorpusRef
from infra.experiment.config import EvalSpec, ExperimentConfig, TaskSpec
from infra.experiment.grid import JobSpec, distil_job, expand_grid
from infra.experiment.jobs import EvalRecord, GridContext
from infra.track.tracking import ModelRef
from infra.train import cluster
from infra.train.console import GridProgress
from tasks import cache
from tasks.evaluate import evaluate
from tasks.prepare import prepare_corpus
from tasks.train import distil_student, finetune_teacher, prune

Trained = tuple[JobSpec, ModelRef]
Submit = Callable[[JobSpec, bool], PrefectFuture]  # (job, refresh) -> its task run


def refreshed(task: Task, refresh: bool) -> Task:
    """`task`, or one that runs again instead of reading its cached result."""
    return task.with_options(refresh_cache=True) if refresh else task


@dataclass
class GridRunner:
    """The cached tasks of one grid (results under its PRUNEGRID_HOME/results) and its failures."""

    ctx: GridContext
    teacher_task: Task
    distil_task: Task
    prune_task: Task
    evaluate_task: Task
    failed: list[str] = field(default_factory=list)  # "label (job_id): why", one per failed job
    progress: GridProgress | None = None  # the console's grid line, at each job's start and end

    @classmethod
    def open(cls, ctx: GridContext, progress: GridProgress | None = None) -> GridRunner:
        store = {"result_storage": cache.storage(ctx.home)}
        return cls(ctx, finetune_teacher.with_options(**store), distil_student.with_options(**store),
                   prune.with_options(**store), evaluate.with_options(**store), progress=progress)

    def teacher(self, job: JobSpec, dataset: DatasetRef) -> ModelRef:
        """Stage 2: the fine-tuned teacher, trained again if its cached model folder is gone."""
        self._begin(job)
        # In a task runner thread, as every training job: a Ctrl-C then reaches the flow's own
        # code, not the SIGINT handler Ray Train installs around a fit() in the main thread.
        try:
            ref = self.teacher_task.submit(job=job, dataset=dataset, ctx=self.ctx).result()
            if not Path(ref.local_dir).is_dir():
                ref = refreshed(self.teacher_task, True).submit(job=job, dataset=dataset,
                                                                ctx=self.ctx).result()
        except BaseException:
            self._end(job, ok=False)
            raise
        self._end(job)
        return ref

    def prune_grid(self, cfg: ExperimentConfig, spec: TaskSpec, dataset: DatasetRef,
                   teacher: ModelRef) -> list[Trained]:
        """Stage 3: every grid point of `spec` pruned from `teacher`, in grid order.

        Two-stage methods start from a distilled student; a grid point whose student failed
        is skipped (its failure is already recorded).
        """
        grid = expand_grid(cfg, spec)
        students = self._students(cfg, spec, grid, dataset)
        ready = [job for job in grid if job.job_id in students or distil_job(cfg, spec, job) is None]

        def submit(job: JobSpec, refresh: bool) -> PrefectFuture:
            return refreshed(self.prune_task, refresh).submit(
                job=job, dataset=dataset, teacher=teacher, ctx=self.ctx,
                student=students.get(job.job_id))

        return self._window(ready, submit)

    def evaluate(self, job: JobSpec, model: ModelRef, dataset: DatasetRef,
                 spec: EvalSpec) -> EvalRecord:
        """Stage 4: one model's metrics, size and latency (cached)."""
        return self.evaluate_task(job=job, model=model, dataset=dataset, ctx=self.ctx, spec=spec)

    def _students(self, cfg: ExperimentConfig, spec: TaskSpec, grid: list[JobSpec],
                  dataset: DatasetRef) -> dict[str, ModelRef]:
        """Task-agnostic stages of two-stage methods, once per distinct stage job: grid job id -> student."""
        firsts = {job.job_id: d for job in grid if (d := distil_job(cfg, spec, job)) is not None}
        if not firsts:
            return {}
        text: CorpusRef = prepare_corpus(cfg.distil, cfg.model, dataset, self.ctx)
        unique = list({d.job_id: d for d in firsts.values()}.values())

        def submit(job: JobSpec, refresh: bool) -> PrefectFuture:
            return refreshed(self.distil_task, refresh).submit(
                job=job, corpus=text, ctx=self.ctx)

        done = {d.job_id: ref for d, ref in self._window(unique, submit)}
        return {job_id: done[d.job_id] for job_id, d in firsts.items() if d.job_id in done}

    def _window(self, jobs: list[JobSpec], submit: Submit) -> list[Trained]:
        """Run jobs, as many at a time as the cluster holds; a failure spares the rest."""
        if not jobs:
            return []
        compute = jobs[0].compute
        trained: list[Trained] = []

        def settle(job: JobSpec, future: PrefectFuture) -> PrefectFuture | None:
            if future.state.is_completed() and Path(future.result().local_dir).is_dir():
                trained.append((job, future.result()))
            elif future.state.is_completed():  # a cached ref whose model folder was deleted since
                return submit(job, True)
            else:
                self.failed.append(f"{job.label} ({job.job_id}): {future.state.message}")
            self._end(job, ok=future.state.is_completed())
            return None

        def start(job: JobSpec) -> PrefectFuture:
            self._begin(job)
            return submit(job, False)

        slots = cluster.job_slots(compute.num_workers, compute.cpus_per_worker, compute.use_gpu)
        if self.progress is not None:
            self.progress.slots = slots
        cluster.run_window(jobs, slots=slots, start=start, is_done=_final, settle=settle)
        order = {job.job_id: i for i, job in enumerate(jobs)}
        return sorted(trained, key=lambda pair: order[pair[0].job_id])


    def _begin(self, job: JobSpec) -> None:
        if self.progress is not None:
            self.progress.started(job.label, job.stage)

    def _end(self, job: JobSpec, ok: bool = True) -> None:
        if self.progress is not None:
            self.progress.finished(job.label, ok)


def _final(future: PrefectFuture[Any]) -> bool:
    return future.state.is_final()
