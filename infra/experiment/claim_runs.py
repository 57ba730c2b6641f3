"""The claims of experiment configs measured on what their grid runs logged in MLflow.

A refresh runs each config through the prune-grid flow; this reads the newest finished grid run
of each config back (records-<task>.json and every model's predictions.parquet, tasks written by
jobs.summarise and jobs.evaluate), so the report is computed from the tracking server, never from
a process's memory.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from infra.evaluate import claims_report, summary
from infra.evaluate.claims_report import ClaimResult, TaskResults
from infra.experiment.config import ExperimentConfig
from infra.experiment.grid import distil_job, expand_grid, teacher_job
from infra.experiment.jobs import PREDICTIONS
from infra.track import grid_runs, tracking
from infra.train.loop import total_steps

RECORDS_PREFIX = "records-"  # jobs.RECORDS without its task


@dataclasses.dataclass(frozen=True)
class ExperimentClaims:
    """One config's claims as measured, with the grid run they were read from."""

    experiment: str
    budget: str  # the budget spelled out, wall time included
    url: str  # the grid run in MLflow's UI
    results: tuple[ClaimResult, ...]
    errors: tuple[str, ...]  # claims that could not be measured, and why

    def markdown(self) -> str:
        text = claims_report.markdown(self.experiment, f"{self.budget} Grid run: {self.url}", self.results)
        return text + "".join(f"\nNot measured: {e}\n" for e in self.errors)


def grid_of(uri: str, cfg: ExperimentConfig) -> grid_runs.GridArtifacts:
    """The newest finished grid run that trained `cfg`'s jobs: per task, its teacher and only
    grid points of `cfg` (a job that failed may be missing). Jobs, not the config's hash, decide:
    job ids hold everything that shapes a model, so a schema change that dumps one more default
    (or a changed gate) still finds the models already trained."""
    expected = {t.name: (teacher_job(cfg, t).job_id, {j.job_id for j in expand_grid(cfg, t)}) for t in cfg.tasks}

    def ours(texts: dict[str, str]) -> bool:
        for text in texts.values():
            task = TaskResults.from_json(text)
            teacher, grid = expected.get(task.task, ("", set()))
            ids = {m.job_id for m in task.models}
            if teacher not in ids or not ids <= grid | {teacher}:
                return False
        return True

    return grid_runs.finished_grid(uri, cfg.name, RECORDS_PREFIX, ours, "that trained this config's jobs and logged their records")


def task_results(uri: str, cfg: ExperimentConfig) -> tuple[grid_runs.GridArtifacts, list[TaskResults]]:
    """The newest finished grid run of `cfg` and, per task, its models with their test predictions."""
    found = grid_of(uri, cfg)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in sorted(found.texts):
            task = TaskResults.from_json(found.texts[name])
            predictions, models = {}, []
            for m in task.models:
                path = tracking.download_artifact(uri, m.run_id, PREDICTIONS, Path(tmp) / m.job_id)
                predictions[m.job_id] = summary.splits_from_table(pq.read_table(path), task.members)
                # The job run's own metrics too (its recovery summary); evaluation's win a clash.
                models.append(dataclasses.replace(m, metrics=grid_runs.run_metrics(uri, m.run_id) | m.metrics))
            out.append(dataclasses.replace(task, models=tuple(models), predictions=predictions))
    return found, out


def training_seconds(uri: str, cfg: ExperimentConfig, tasks: list[TaskResults]) -> float:
    """The training runs behind `tasks`' models, summed: each model's job run (the teacher's
    included) wherever it ran (a job from the cache counts where it first ran), and each
    task-agnostic stage they start from: the newest finished run of its job that ended before
    the last model run did."""
    runs = [grid_runs.run_span(uri, m.run_id) for t in tasks for m in t.models]
    last_end = max((end for _, end in runs), default=0)
    stages = {d.job_id for t in cfg.tasks for j in expand_grid(cfg, t) if (d := distil_job(cfg, t, j))}
    for job_id in sorted(stages):
        done = [span for span in grid_runs.job_spans(uri, job_id) if span[1] <= last_end]
        runs += done[:1]
    return sum(end - start for start, end in runs) / 1000


def _hours(seconds: float) -> str:
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def budget(cfg: ExperimentConfig, tasks: list[TaskResults], wall_seconds: float, trained_seconds: float) -> str:
    """What the claims were measured on, in one paragraph."""
    train = ", ".join(f"{t.task}: {t.train_examples} training examples" for t in tasks)
    batches = {t.task: -(-t.train_examples // cfg.teacher.batch_size) for t in tasks}
    first = next(iter(batches.values()), 1)
    prune = {m: cfg.prune_for(m) for m in cfg.grid.methods}
    steps = ", ".join(f"{m} {total_steps(p.epochs, -(-tasks[0].train_examples // p.batch_size)) if tasks else '?'}"
                      f" ({p.lr_schedule} lr {p.learning_rate:g})" for m, p in prune.items())
    shared = "" if cfg.distil.per_seed else f", one student (seed {cfg.grid.seeds[0]}) that every seed fine-tunes"
    distil = (f" HomoDistil's task-agnostic stage: {cfg.distil.train.epochs:g} epoch(s) over at most "
              f"{cfg.distil.max_texts} texts{shared}." if "homodistil" in cfg.grid.methods else "")
    return (f"Budget: {train}; teacher {cfg.teacher.epochs:g} epoch(s) = "
            f"{total_steps(cfg.teacher.epochs, first)} steps; pruning steps per job: {steps};"
            f"{distil} Seeds {list(cfg.grid.seeds)}, precision {cfg.compute.precision}. "
            f"Wall time of the grid run: {_hours(wall_seconds)}; its models' training runs, summed: "
            f"{_hours(trained_seconds)} (the teacher and any task-agnostic stage included, jobs found in "
            f"the cache counted where they first ran; evaluation not included).")


def measure(uri: str, cfg: ExperimentConfig) -> ExperimentClaims:
    """Every claim of `cfg` on its newest finished grid run (TrackingError when there is none)."""
    found, tasks = task_results(uri, cfg)
    errors: list[str] = []
    results = claims_report.assess_all(cfg.claims, tasks, on_error=errors.append)
    spelled_out = budget(cfg, tasks, found.wall_seconds, training_seconds(uri, cfg, tasks))
    return ExperimentClaims(cfg.name, spelled_out, found.url, tuple(results), tuple(errors))


HEADER = ("Generated by the benchmark refresh (`make claims`; the `benchmark-refresh` deployment) "
          "from the grid runs in MLflow. Verdict: holds / does not hold when the 95% interval of "
          "the difference excludes 0, inconclusive when it contains it.")


def report_markdown(measured: list[ExperimentClaims], problems: list[str]) -> str:
    """The whole report: one section per experiment, then what could not be measured."""
    parts = [HEADER, *(m.markdown() for m in measured)]
    if problems:
        parts.append("### Not run to the end\n\n" + "\n".join(f"- {p}" for p in problems))
    return "\n\n".join(parts) + "\n"


def report_csv(measured: list[ExperimentClaims]) -> str:
    """One row per claim and task, every number of the report."""
    rows = [{"experiment": m.experiment, **{k: v for k, v in dataclasses.asdict(r).items()
                                             if not k.endswith("_values")},
             "candidate_values": " ".join(f"{v:.6g}" for v in r.candidate_values),
             "baseline_values": " ".join(f"{v:.6g}" for v in r.baseline_values)}
            for m in measured for r in m.results]
    return pd.DataFrame(rows).to_csv(index=False)
