"""Open and close a grid run: checks before any work, and the parent MLflow run."""

from __future__ import annotations

from prefect import task

from infra.experiment import preflight
from infra.track import tracking
from infra.experiment.config import ExperimentConfig
from infra.experiment.grid import job_hash
from infra.experiment.jobs import GridContext
from infra.experiment.provenance import code_version, library_versions
from infra.experiment.settings import Settings


@task(name="open-grid")
def open_grid(cfg: ExperimentConfig, config_path: str, tracking_uri: str) -> GridContext:
    """Check the model, the data and the tracking server, then open the grid's parent MLflow run."""
    settings = Settings.from_env()
    pretrained = preflight.check(cfg, tracking_uri, settings.allow_hub)
    experiment_id = tracking.ensure_experiment(tracking_uri, cfg.name)
    config_hash = job_hash(cfg.model_dump(mode="json"))
    tracking.close_interrupted_runs(tracking_uri, experiment_id, "config_hash", config_hash)
    parent = tracking.start_run(tracking_uri, experiment_id, f"grid-{cfg.name}",
                                tags={"role": "grid", "code_version": code_version(),
                                      "config_hash": config_hash})
    tracking.log_params(tracking_uri, parent, {"config_path": config_path, "code_version": code_version(),
                                               **{f"lib.{k}": v for k, v in library_versions().items()}})
    tracking.log_text(tracking_uri, parent, cfg.model_dump_json(indent=2), "experiment.json")
    return GridContext(cfg.name, tracking_uri, experiment_id, parent, str(settings.home), pretrained,
                       settings.allow_hub)


@task(name="close-grid")
def close_grid(ctx: GridContext, table_markdown: str, table_csv: str, failed: list[str]) -> None:
    """Attach the results table to the parent run and mark it finished or failed."""
    if table_markdown:
        tracking.log_text(ctx.tracking_uri, ctx.parent_run_id, table_markdown, "results.md")
        tracking.log_text(ctx.tracking_uri, ctx.parent_run_id, table_csv, "results.csv")
    error = f"failed: {'; '.join(failed)}" if failed else None
    tracking.end_run(ctx.tracking_uri, ctx.parent_run_id, ok=not failed, error=error)
