"""Grid runs read back from MLflow: the newest grid run of an experiment and its results table.

What `prunegrid results` and `prunegrid ui` show; the grid's parent run holds `results.md`
(tasks/grid.close_grid) once its grid finished, with or without failed jobs.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from infra.track import tracking

RESULTS_MD = "results.md"  # tasks/grid.close_grid logs it on the grid's parent run


@dataclass(frozen=True)
class GridResults:
    """The results table of one grid run, and where to see it."""

    experiment: str
    run_id: str
    run_name: str
    status: str  # FINISHED, FAILED, KILLED, RUNNING
    markdown: str
    url: str  # the run's page in the UI


def experiment_id(uri: str, name: str) -> str:
    """The id of experiment `name`; TrackingError naming the experiments there when it is not."""
    found = tracking.client(uri).get_experiment_by_name(name)
    if found is None or found.lifecycle_stage == "deleted":
        names = sorted(e.name for e in tracking.client(uri).search_experiments())
        raise tracking.TrackingError(f"no experiment named {name!r} on {uri}; experiments there: "
                                     f"{', '.join(names) or 'none (run a grid first: prunegrid run CONFIG)'}")
    return found.experiment_id


def latest_results(uri: str, experiment: str | None = None, *, look_back: int = 20) -> GridResults:
    """The newest grid run (of `experiment`, else of any) that holds a results table.

    A grid stopped by an error holds none; older runs are searched, `look_back` at most.
    Raises TrackingError when no grid run holds one.
    """
    mlflow = tracking.client(uri)
    ids = [experiment_id(uri, experiment)] if experiment else [
        e.experiment_id for e in mlflow.search_experiments()]
    runs = mlflow.search_runs(ids, f"tags.{tracking.ROLE_TAG} = '{tracking.GRID_ROLE}'",
                              order_by=["attributes.start_time DESC"], max_results=look_back) if ids else []
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            if RESULTS_MD not in {f.path for f in mlflow.list_artifacts(run.info.run_id)}:
                continue  # no table: the grid stopped before its end
            path = tracking.download_artifact(uri, run.info.run_id, RESULTS_MD, Path(tmp) / run.info.run_id)
            name = mlflow.get_experiment(run.info.experiment_id).name
            return GridResults(name, run.info.run_id, run.info.run_name or "", run.info.status,
                               Path(path).read_text(),
                               tracking.runs_url(uri, run.info.experiment_id, run.info.run_id))
    where = f"experiment {experiment!r}" if experiment else uri
    if not runs:
        raise tracking.TrackingError(f"no grid run in {where} yet; run one: prunegrid run CONFIG")
    raise tracking.TrackingError(f"none of the newest {len(runs)} grid run(s) in {where} holds a results "
                                 "table (each stopped before its end; its error tag says why)")


@dataclass(frozen=True)
class GridArtifacts:
    """The newest finished grid run of one experiment config, and some of its text artifacts."""

    run_id: str
    status: str
    wall_seconds: float  # the grid run's start to end (a refresh that resumed: its last attempt)
    url: str
    texts: dict[str, str]  # artifact file -> contents


def finished_grid(uri: str, experiment: str, prefix: str, ours: Callable[[dict[str, str]], bool],
                  wanted: str) -> GridArtifacts:
    """The newest grid run of `experiment` that ended, logged files starting with `prefix` and
    whose files `ours` accepts, with those files; TrackingError naming what is missing otherwise.
    `wanted` says in words which runs `ours` accepts (for that error)."""
    mlflow = tracking.client(uri)
    runs = mlflow.search_runs([experiment_id(uri, experiment)], f"tags.{tracking.ROLE_TAG} = '{tracking.GRID_ROLE}'",
                              order_by=["attributes.start_time DESC"])
    for run in runs:
        files = [f.path for f in mlflow.list_artifacts(run.info.run_id) if f.path.startswith(prefix)]
        if not files or run.info.end_time is None:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            texts = {f: tracking.download_artifact(uri, run.info.run_id, f, Path(tmp)).read_text() for f in files}
        if not ours(texts):
            continue
        return GridArtifacts(run.info.run_id, run.info.status, (run.info.end_time - run.info.start_time) / 1000,
                             tracking.runs_url(uri, run.info.experiment_id, run.info.run_id), texts)
    raise tracking.TrackingError(f"experiment {experiment!r} has no finished grid run {wanted} (of its "
                                 f"{len(runs)} grid run(s)); run it first: prunegrid run <its config>")


def run_span(uri: str, run_id: str) -> tuple[int, int]:
    """A run's start and end, in ms since the epoch (an unfinished run: its start twice)."""
    info = tracking.client(uri).get_run(run_id).info
    return info.start_time, info.end_time or info.start_time


def job_spans(uri: str, job_id: str) -> list[tuple[int, int]]:
    """The start and end (ms) of every finished run of job `job_id` in any experiment, newest first."""
    mlflow = tracking.client(uri)
    ids = [e.experiment_id for e in mlflow.search_experiments()]
    runs = mlflow.search_runs(ids, f"tags.job_id = '{job_id}' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"]) if ids else []
    return [(r.info.start_time, r.info.end_time) for r in runs if r.info.end_time]


def run_metrics(uri: str, run_id: str) -> dict[str, float]:
    """A run's metrics, latest value of each (a job run's: its recovery summary among them)."""
    return dict(tracking.client(uri).get_run(run_id).data.metrics)
