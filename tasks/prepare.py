"""Stage 1: the task's data, validated, split, tokenised and written as parquet."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from infra import data, models
from infra.preflight import split_spec, task_source
from infra.config import ModelSpec, TaskSpec
from infra.jobs import GridContext


@task(name="prepare-dataset", task_run_name="prepare-dataset-{spec.name}")
def prepare_dataset(spec: TaskSpec, model: ModelSpec, ctx: GridContext) -> data.DatasetRef:
    """Load, validate, split and tokenise one task; returns a ref with the content hash."""
    tokenizer = models.load_tokenizer(ctx.pretrained)
    return data.prepare(task_source(spec), split_spec(spec), tokenizer, model.max_length,
                        Path(ctx.home) / "data", allow_hub=ctx.allow_hub)
