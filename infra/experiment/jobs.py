"""One job's life around its Ray Train run: MLflow run, parameters, artifacts, status.

Tasks call these with small references; the heavy lifting stays in ray_job.py,
evaluation.py and registry.py.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from infra.evaluate import claims_report, evaluation, summary, tradeoff
from infra.evaluate.stats import Splits
from infra.experiment import paths
from infra.track import registry
from infra.track import tracking
from infra.train import ray_job, stopping
from infra.experiment.config import EvalSpec, RegistrySpec
from infra.data.corpus import CorpusRef
from infra.data import DatasetRef
from infra.experiment import grid
from infra.experiment.grid import JobSpec
from infra.models import pretrained
from infra.experiment.provenance import code_version, library_versions
from infra.track.tracking import ModelRef

# Each evaluated model's predictions on every evaluated split, an artifact of its run
# (evaluation.predictions_table's columns): what the paired statistics of the seed table read.
PREDICTIONS = "predictions.parquet"
# Per task, the grid's evaluated models (teacher first) on the grid's parent run: the claims report's input.
RECORDS = "records-{task}.json"


@dataclass(frozen=True)
class GridContext:
    """Where one grid run logs: passed to every task (small and hashable)."""

    experiment: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    home: str
    pretrained: str  # resolved pretrained model directory
    allow_hub: bool = False


@dataclass(frozen=True)
class EvalRecord:
    """One evaluated model: what the results table and promotion read."""

    job_id: str
    label: str
    method: str
    target_sparsity: float
    model: ModelRef
    metrics: tuple[tuple[str, float], ...]
    seed: int = 0
    options: tuple[tuple[str, object], ...] = ()  # the grid point's method options

    def metric(self, name: str) -> float:
        return dict(self.metrics)[name]


def job_args(job: JobSpec, dataset: DatasetRef | CorpusRef, teacher: ModelRef | None, ctx: GridContext,
             run_id: str | None, student: ModelRef | None = None) -> ray_job.JobArgs:
    """What every Ray worker of `job` gets: its settings, where its data and models are."""
    t = job.train
    return ray_job.JobArgs(
        job_id=job.job_id, method=job.method, sparsity=job.sparsity, seed=job.seed,
        options=dict(job.options), data_path=dataset.path, pretrained=ctx.pretrained,
        init=job.model.init, teacher_dir=teacher.local_dir if teacher else None,
        stage=job.stage, student_dir=student.local_dir if student else None,
        epochs=t.epochs, batch_size=t.batch_size, learning_rate=t.learning_rate,
        weight_decay=t.weight_decay, warmup_fraction=t.warmup_fraction,
        lr_schedule=t.lr_schedule, min_lr_fraction=t.min_lr_fraction, precision=job.compute.precision,
        max_grad_norm=t.max_grad_norm, checkpoint_every=t.checkpoint_every, log_every=t.log_every,
        mlflow_run_id=run_id, tracking_uri=ctx.tracking_uri,
        threads_per_worker=job.compute.cpus_per_worker, length_buckets=t.length_buckets,
        teacher_cache_dir=str(paths.teacher_outputs_dir(ctx.home)),
        teacher_cache_mb=job.compute.teacher_cache_mb, teacher_cache_dtype=job.compute.teacher_cache_dtype,
    )


def _flat(prefix: str, value: object) -> dict[str, object]:
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for key, inner in value.items():
            out |= _flat(f"{prefix}.{key}" if prefix else str(key), inner)
        return out
    return {prefix: value}


def _log_recovery(uri: str, run_id: str, path: Path) -> None:
    """The recovery curve of a masked method as the run's `recovery.json`, its means as metrics."""
    if not path.is_file():
        return  # dense jobs keep no curve
    text = path.read_text()
    tracking.log_text(uri, run_id, text, "recovery.json")
    tracking.log_metrics(uri, run_id, json.loads(text).get("summary", {}))


def _role(job: JobSpec) -> str:
    return "teacher" if job.is_teacher else "distilled" if job.stage == "distil" else "pruned"


def run_key(job: JobSpec, dataset: DatasetRef | CorpusRef, teacher: ModelRef | None, ctx: GridContext,
            student: ModelRef | None = None) -> str:
    """grid.run_key of this run: it names the model and checkpoint folders and keys the cache.
    An upstream model counts by its MLflow run, so a teacher trained again trains its grid again."""
    upstream = [f"{ref.job_id}@{ref.run_id}" for ref in (teacher, student) if ref is not None]
    return grid.run_key(job.job_id, data_hash=dataset.content_hash, upstream=upstream,
                        pretrained=pretrained.fingerprint(ctx.pretrained))


def train(job: JobSpec, dataset: DatasetRef | CorpusRef, teacher: ModelRef | None, ctx: GridContext,
          student: ModelRef | None = None) -> ModelRef:
    """Run one training job under its own MLflow run (nested in the grid's run).

    `dataset` is the task's data, or the text corpus of a task-agnostic stage; `student`
    the distilled model a two-stage method's task stage starts from.
    """
    key = run_key(job, dataset, teacher, ctx, student)
    tags = {"job_id": job.job_id, "run_key": key, "task": job.task, "method": job.method,
            "target_sparsity": str(job.sparsity), "seed": str(job.seed),
            "role": _role(job), "code_version": code_version(), "data_hash": dataset.content_hash}
    # A run left RUNNING by a driver that died (killed, machine lost) is closed first: its
    # Ray checkpoints stay and this run resumes from them.
    tracking.close_interrupted_runs(ctx.tracking_uri, ctx.experiment_id, "job_id", job.job_id)
    run_id = tracking.start_run(ctx.tracking_uri, ctx.experiment_id, job.label,
                                parent_run_id=ctx.parent_run_id, tags=tags)
    resolved = job.resolved() | {"data_hash": dataset.content_hash, "code_version": code_version(),
                                 "libraries": library_versions(),
                                 "starts_from": student.job_id if student else None,
                                 "teacher_run": teacher.run_id if teacher else None, "run_key": key}
    tracking.log_params(ctx.tracking_uri, run_id, _flat("", resolved))
    tracking.log_text(ctx.tracking_uri, run_id, json.dumps(resolved, indent=2, sort_keys=True),
                      "resolved_config.json")
    out_dir = paths.models_dir(ctx.home) / f"{job.job_id}-{key[:8]}"
    try:
        ray_job.run_job(
            job_args(job, dataset, teacher, ctx, run_id, student), run_name=out_dir.name,
            num_workers=job.compute.num_workers,
            cpus_per_worker=job.compute.cpus_per_worker, use_gpu=job.compute.use_gpu,
            max_failures=job.compute.max_failures, storage_path=paths.ray_results_dir(ctx.home),
            out_dir=out_dir)
        tracking.log_dir(ctx.tracking_uri, run_id, out_dir, "model")
        _log_recovery(ctx.tracking_uri, run_id, ray_job.recovery_path(out_dir))
        # A finished run keeps no checkpoints: a rerun of the same key (a refreshed cache)
        # trains again instead of restoring this run's final model. Unfinished runs keep theirs.
        shutil.rmtree(paths.ray_results_dir(ctx.home) / out_dir.name, ignore_errors=True)
    except BaseException as error:
        # Stopped with its driver (Ctrl-C, a cancelled flow run): KILLED, and a rerun resumes it.
        tracking.end_run(ctx.tracking_uri, run_id, ok=False, error=str(error),
                         killed=stopping.requested() or not isinstance(error, Exception))
        raise
    tracking.end_run(ctx.tracking_uri, run_id, ok=True)
    return ModelRef(job.job_id, run_id, "model", str(out_dir))


def evaluate(job: JobSpec, model: ModelRef, dataset: DatasetRef, ctx: GridContext,
             spec: EvalSpec) -> EvalRecord:
    """Evaluate one trained model; log its metrics and per-example predictions to its run."""
    result = evaluation.evaluate_model(
        model.local_dir, dataset, batch_size=spec.batch_size, latency_batch_sizes=spec.latency_batch_sizes,
        latency_seq_len=spec.latency_seq_len, latency_repeats=spec.latency_repeats,
        latency_threads=spec.latency_threads)
    tracking.log_metrics(ctx.tracking_uri, model.run_id, result.metrics)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / PREDICTIONS
        pq.write_table(result.predictions, path, compression="zstd")
        tracking.log_file(ctx.tracking_uri, model.run_id, path)
    return EvalRecord(job.job_id, job.label, job.method, job.sparsity, model,
                      tuple(sorted(result.metrics.items())), job.seed, job.options)


@dataclass(frozen=True)
class Promotion:
    """What the registry holds for a task after a grid: versions by job, aliases by name."""

    registered_model: str
    versions: tuple[tuple[str, str], ...]  # (job_id, version)
    aliases: tuple[tuple[str, str], ...]  # (alias, version)


def register_and_promote(task: str, records: list[EvalRecord], teacher: EvalRecord, ctx: GridContext,
                         spec: RegistrySpec, budgets: tuple[float, ...], metric: str) -> Promotion:
    """Register every model of a task; move the aliases to the models that earned them.
    `metric`: the dev metric the gate compares (TaskSpec.gate_metric)."""
    name = spec.model_name.format(task=task, experiment=ctx.experiment)
    teacher_metric = teacher.metric(metric)
    candidates, versions = [], []
    for record in [teacher, *records]:
        m = dict(record.metrics)
        candidate = registry.Candidate("", record.job_id, record.target_sparsity,
                                       m["encoder_sparsity"], m[metric])
        passed = registry.passes_gate(candidate, teacher_metric, spec.gate.max_drop)
        tags = {"method": record.method, "label": record.label, "task": task,
                "experiment": ctx.experiment, "target_sparsity": f"{record.target_sparsity:.4f}",
                "passed_gate": str(passed).lower(), "gate_metric": metric,
                **{k: f"{v:.6g}" for k, v in m.items()}}
        version = registry.register(ctx.tracking_uri, name, record.model, tags)
        versions.append((record.job_id, version))
        candidates.append(registry.Candidate(version, record.job_id, record.target_sparsity,
                                             m["encoder_sparsity"], m[metric]))
    chosen = registry.choose(candidates, teacher_metric, spec.gate.max_drop)
    managed = [registry.CHAMPION, *(registry.budget_alias(b) for b in budgets if b > 0)]
    aliases = registry.promote(ctx.tracking_uri, name, chosen, managed, scope=ctx.experiment)
    return Promotion(name, tuple(versions), tuple(sorted(aliases.items())))


@dataclass(frozen=True)
class TaskSummary:
    """A task's seed-aware table and the name of its trade-off figure on the grid's parent run."""

    table: pd.DataFrame  # summary.seed_frame's rows
    figure: str  # artifact file of the parent run


def _predictions(uri: str, records: list[EvalRecord], members: tuple[str, ...]) -> dict[str, Splits]:
    """job_id -> the model's predictions on `members`, read back from its run's artifact."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in records:
            path = tracking.download_artifact(uri, r.model.run_id, PREDICTIONS, Path(tmp) / r.job_id)
            out[r.job_id] = summary.splits_from_table(pq.read_table(path), members)
    return out


def summarise(task: str, records: list[EvalRecord], promotion: Promotion, dataset: DatasetRef,
              ctx: GridContext, metric: str, max_drop: float) -> TaskSummary:
    """Put a task's trade-off on the grid's parent run: the figure, and the rows' means as
    metrics; return its seed table. `records`: the teacher's first, then every grid model's;
    `metric`: the dev metric the gate compares."""
    members, statistic = summary.statistic_on_test(dataset, metric)
    predictions = _predictions(ctx.tracking_uri, records, members)
    table = summary.seed_frame(task, records, metric, dict(promotion.aliases), dict(promotion.versions),
                               predictions, statistic)
    # What the claims report reads back (infra/evaluate/claims_report.py): the models and how
    # the gate metric is computed on their predictions.
    tracking.log_text(ctx.tracking_uri, ctx.parent_run_id,
                      claims_report.records_json(task, records[0], records[1:], dataset, metric, members),
                      RECORDS.format(task=task))
    figure = f"tradeoff-{task}.png"
    tracking.log_figure(ctx.tracking_uri, ctx.parent_run_id,
                        tradeoff.draw(tradeoff.figure_data(table, max_drop)), figure)
    tracking.log_metrics(ctx.tracking_uri, ctx.parent_run_id, summary.parent_metrics(table))
    return TaskSummary(table, figure)
