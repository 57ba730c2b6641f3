"""Stage 1: the task's data, validated, split, tokenised and written as parquet."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from infra import data, models
from infra.config import ModelSpec, TaskSpec
from infra.jobs import GridContext


def task_source(spec: TaskSpec) -> data.TaskSource:
    """Plain loader arguments from the task's config."""
    return data.TaskSource(name=spec.name, kind=spec.source, path=spec.path, subset=spec.subset,
                           text_column=spec.text_column, text_pair_column=spec.text_pair_column,
                           label_column=spec.label_column, labels=spec.labels)


def split_spec(spec: TaskSpec) -> data.SplitSpec:
    s = spec.split
    return data.SplitSpec(dev_fraction=s.dev_fraction, test_fraction=s.test_fraction, seed=s.seed,
                          max_train_examples=s.max_train_examples, max_eval_examples=s.max_eval_examples)


@task(name="prepare-dataset", task_run_name="prepare-dataset-{spec.name}")
def prepare_dataset(spec: TaskSpec, model: ModelSpec, ctx: GridContext) -> data.DatasetRef:
    """Load, validate, split and tokenise one task; returns a ref with the content hash."""
    tokenizer = models.load_tokenizer(ctx.pretrained)
    return data.prepare(task_source(spec), split_spec(spec), tokenizer, model.max_length,
                        Path(ctx.home) / "data", allow_hub=ctx.allow_hub)
