"""The claims report of a benchmark refresh: measured from MLflow, logged and written."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact

from infra.experiment import claim_runs
from infra.experiment.config import load_config
from infra.track import tracking

REFRESH_EXPERIMENT = "benchmark-refresh"  # the MLflow experiment of the refresh runs
REPORT_MD, REPORT_CSV = "claims.md", "claims.csv"


@task(name="claims-report", retries=2, retry_delay_seconds=5)  # reads and writes cross the network
def claims_report(configs: list[str], tracking_uri: str, out: str, failed: list[str]) -> str:
    """Every config's claims from its newest finished grid run, on a refresh run and in `out`."""
    measured, missing = [], []
    for path in configs:
        try:
            measured.append(claim_runs.measure(tracking_uri, load_config(path)))
        except tracking.TrackingError as error:  # its grid never finished: say so, report the rest
            missing.append(f"{path}: {error}")
    text = claim_runs.report_markdown(measured, missing + failed)
    experiment_id = tracking.ensure_experiment(tracking_uri, REFRESH_EXPERIMENT)
    run = tracking.start_run(tracking_uri, experiment_id, "refresh", tags={"configs": ",".join(configs)})
    tracking.log_text(tracking_uri, run, text, REPORT_MD)
    tracking.log_text(tracking_uri, run, claim_runs.report_csv(measured), REPORT_CSV)
    tracking.end_run(tracking_uri, run, ok=not (missing or failed))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text)
    create_markdown_artifact(text, key="claims-report", description="the papers' claims, measured")
    return text
