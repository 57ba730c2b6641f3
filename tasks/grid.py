"""Open and close a grid run: checks before any work, and the parent MLflow run."""

from __future__ import annotations

import re

import pandas as pd
from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from infra.data import DatasetRef
from infra.evaluate import summary
from infra.experiment import jobs, preflight
from infra.track import tracking
from infra.experiment.config import ExperimentConfig
from infra.experiment.grid import job_hash
from infra.experiment.jobs import EvalRecord, GridContext, Promotion
from infra.experiment.provenance import code_version, library_versions
from infra.experiment.settings import Settings


# The seed-aware table of every task, beside results.md on the grid's parent run.
SEEDS_MD, SEEDS_CSV = "results_seeds.md", "results_seeds.csv"


@task(name="open-grid")
def open_grid(cfg: ExperimentConfig, config_path: str, tracking_uri: str) -> GridContext:
    """Check the model, the data and the tracking server, then open the grid's parent MLflow run."""
    settings = Settings.from_env()
    pretrained = preflight.check(cfg, tracking_uri, settings.allow_hub)
    experiment_id = tracking.ensure_experiment(tracking_uri, cfg.name)
    config_hash = job_hash(cfg.model_dump(mode="json"))
    tracking.close_interrupted_runs(tracking_uri, experiment_id, "config_hash", config_hash)
    parent = tracking.start_run(tracking_uri, experiment_id, f"grid-{cfg.name}",
                                tags={tracking.ROLE_TAG: tracking.GRID_ROLE, "code_version": code_version(),
                                      "config_hash": config_hash})
    tracking.log_params(tracking_uri, parent, {"config_path": config_path, "code_version": code_version(),
                                               **{f"lib.{k}": v for k, v in library_versions().items()}})
    tracking.log_text(tracking_uri, parent, cfg.model_dump_json(indent=2), "experiment.json")
    return GridContext(cfg.name, tracking_uri, experiment_id, parent, str(settings.home), pretrained,
                       settings.allow_hub)


@task(name="summarise", task_run_name="summarise-{task_name}",
      retries=2, retry_delay_seconds=5)  # artifact reads and writes cross the network
def summarise(task_name: str, records: list[EvalRecord], promotion: Promotion, dataset: DatasetRef,
              ctx: GridContext, metric: str, max_drop: float) -> pd.DataFrame:
    """One task's seed table and trade-off figure, on the grid's parent run and as flow-run artifacts."""
    result = jobs.summarise(task_name, records, promotion, dataset, ctx, metric, max_drop)
    key = re.sub(r"[^a-z0-9-]", "-", f"{ctx.experiment}-{task_name}".lower())  # Prefect's key alphabet
    run_url = tracking.runs_url(ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id)
    image = tracking.raw_artifact_url(ctx.tracking_uri, ctx.parent_run_id, result.figure)
    create_markdown_artifact(
        f"## {task_name}: results over seeds\n\n{summary.seed_markdown(result.table)}\n"
        f"![trade-off of {task_name}]({image})\n\nMLflow grid run: {run_url}\n",
        key=f"seeds-{key}", description=f"prune-grid results of {task_name} over seeds")
    create_link_artifact(
        tracking.artifact_url(ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id, result.figure),
        link_text=f"trade-off figure of {task_name} (MLflow)", key=f"tradeoff-{key}",
        description="metric against non-zero parameters, CPU latency and zipped size; Pareto front")
    return result.table


@task(name="close-grid")
def close_grid(ctx: GridContext, table_markdown: str, table_csv: str, failed: list[str],
               seeds: pd.DataFrame | None = None) -> None:
    """Attach the results tables to the parent run and mark it finished or failed."""
    if table_markdown:
        tracking.log_text(ctx.tracking_uri, ctx.parent_run_id, table_markdown, "results.md")
        tracking.log_text(ctx.tracking_uri, ctx.parent_run_id, table_csv, "results.csv")
    if seeds is not None and len(seeds):
        tracking.log_text(ctx.tracking_uri, ctx.parent_run_id, summary.seed_markdown(seeds), SEEDS_MD)
        tracking.log_text(ctx.tracking_uri, ctx.parent_run_id, seeds.to_csv(index=False), SEEDS_CSV)
    error = f"failed: {'; '.join(failed)}" if failed else None
    tracking.end_run(ctx.tracking_uri, ctx.parent_run_id, ok=not failed, error=error)
