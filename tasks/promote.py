"""Stage 5: register every model of a task and promote the ones that pass the gate."""

from __future__ import annotations

from prefect import task

from infra.experiment import jobs
from infra.experiment.config import RegistrySpec
from infra.experiment.jobs import EvalRecord, GridContext, Promotion


@task(name="register-and-promote", task_run_name="register-and-promote-{task_name}",
      retries=2, retry_delay_seconds=5)  # registry calls cross the network
def register_and_promote(task_name: str, records: list[EvalRecord], teacher: EvalRecord,
                         ctx: GridContext, spec: RegistrySpec,
                         budgets: tuple[float, ...], metric: str) -> Promotion:
    """Register the teacher and every pruned model; set `champion` and per-budget aliases."""
    return jobs.register_and_promote(task_name, records, teacher, ctx, spec, budgets, metric)
