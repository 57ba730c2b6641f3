"""Stage 4: task metrics, sparsity (both conventions), size and CPU latency of one model."""

from __future__ import annotations

from prefect import task

from infra.experiment import jobs
from infra.experiment.config import EvalSpec
from infra.data import DatasetRef
from infra.experiment.grid import JobSpec
from infra.experiment.jobs import EvalRecord, GridContext
from infra.track.tracking import ModelRef
from tasks import cache


@task(name="evaluate", task_run_name="evaluate-{job.label}-{job.job_id}", cache_key_fn=cache.evaluate_key,
      **cache.CACHED)
def evaluate(job: JobSpec, model: ModelRef, dataset: DatasetRef, ctx: GridContext,
             spec: EvalSpec) -> EvalRecord:
    """Evaluate one model on dev and test; log its metrics and per-example predictions to its run."""
    return jobs.evaluate(job, model, dataset, ctx, spec)
