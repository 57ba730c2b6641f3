"""Checks before any work, and the builders from config to plain loader arguments.

`check` runs in the CLI before Prefect starts (one clear line for a user's mistake) and
again as the flow's first step (deployment runs have no CLI in front of them).
"""

from __future__ import annotations

from infra import data
from infra.models import pretrained
from infra.track import tracking
from infra.experiment.config import ExperimentConfig, TaskSpec


def task_source(spec: TaskSpec) -> data.TaskSource:
    """Plain loader arguments from the task's config; a registry task fills in what it leaves out."""
    task = spec.benchmark_task()
    columns = {"text_column": spec.text_column, "text_pair_column": spec.text_pair_column,
               "label_column": spec.label_column, "labels": spec.labels}
    if task is not None:
        given = spec.model_fields_set
        registry = {"text_column": task.text_columns[0], "text_pair_column": data.pair_column(task),
                    "label_column": task.label_column,
                    "labels": None if task.is_regression else tuple(range(task.num_labels))}
        columns = {key: columns[key] if key in given else value for key, value in registry.items()}
    return data.TaskSource(name=spec.name, kind=spec.source, path=spec.path, subset=spec.subset,
                           task=task, **columns)


def split_spec(spec: TaskSpec) -> data.SplitPlan:
    """Plain splitter arguments from the task's `split` config."""
    s = spec.split
    return data.SplitPlan(dev_fraction=s.dev_fraction, test_fraction=s.test_fraction, seed=s.seed,
                          max_train_examples=s.max_train_examples, max_eval_examples=s.max_eval_examples)


def check(cfg: ExperimentConfig, tracking_uri: str | None, allow_hub: bool) -> str:
    """Model, every task's data and (unless None) the tracking server; returns the model dir.

    Raises ModelError, DataError or TrackingError naming the problem; nothing is started.
    """
    model_dir = pretrained.resolve_model_dir(cfg.model.name, allow_hub=allow_hub)
    for spec in cfg.tasks:
        source = task_source(spec)
        data.validate(data.load_raw(source, allow_hub=allow_hub), source)
    if tracking_uri is not None:
        tracking.check_reachable(tracking_uri)
    return model_dir
