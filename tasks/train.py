"""Stages 2 and 3: fine-tune the teacher, then one pruning job per grid point (Ray Train)."""

from __future__ import annotations

from prefect import task

from infra.experiment import jobs
from infra.data.corpus import CorpusRef
from infra.data import DatasetRef
from infra.experiment.grid import JobSpec
from infra.experiment.jobs import GridContext
from infra.track.tracking import ModelRef
from tasks import cache


@task(name="finetune-teacher", task_run_name="finetune-teacher-{job.task}-{job.job_id}",
      cache_key_fn=cache.train_key, **cache.CACHED)
def finetune_teacher(job: JobSpec, dataset: DatasetRef, ctx: GridContext) -> ModelRef:
    """Fine-tune the pretrained model on the task: the teacher and the dense baseline."""
    return jobs.train(job, dataset, None, ctx)


@task(name="distil-student", task_run_name="distil-{job.label}-{job.job_id}",
      cache_key_fn=cache.distil_key, **cache.CACHED)
def distil_student(job: JobSpec, corpus: CorpusRef, ctx: GridContext) -> ModelRef:
    """A two-stage method's task-agnostic stage: distil and shrink the pretrained encoder."""
    return jobs.train(job, corpus, None, ctx)


@task(name="prune", task_run_name="prune-{job.label}-{job.job_id}", cache_key_fn=cache.train_key,
      **cache.CACHED)
def prune(job: JobSpec, dataset: DatasetRef, teacher: ModelRef, ctx: GridContext,
          student: ModelRef | None = None) -> ModelRef:
    """One grid point: prune (and distil, per method) from the teacher to the target sparsity."""
    return jobs.train(job, dataset, teacher, ctx, student)
