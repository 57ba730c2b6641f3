"""The `prune-grid` flow: data -> teacher -> pruning grid -> evaluation -> registry.

Run it with `python -m flows.prune_grid configs/demo.yaml`, or as the Prefect deployment
`prune-grid/prune-grid` (prefect.yaml).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from infra.experiment import preflight
from infra.train import cluster
from infra.evaluate import report
from infra.experiment.config import ConfigError, load_config
from infra.data import DataError
from infra.experiment.grid import distil_job, expand_grid, teacher_job
from infra.stack.local_stack import LocalStack, StackError
from infra.models.pretrained import ModelError
from infra.experiment.settings import Settings, apply_offline_env
from infra.track.tracking import TrackingError, check_reachable
from tasks.evaluate import evaluate
from tasks.grid import close_grid, open_grid
from tasks import cache
from tasks.prepare import prepare_corpus, prepare_dataset
from tasks.promote import register_and_promote
from tasks.train import distil_student, finetune_teacher, prune


class GridFailed(RuntimeError):
    """Some grid jobs failed; the others were evaluated, registered and promoted."""


def _tracking_uri(settings: Settings) -> str:
    if settings.mlflow_tracking_uri:
        return settings.mlflow_tracking_uri
    # No server named: start (or reuse) a loopback MLflow server under PRUNEGRID_HOME.
    return LocalStack.from_env(settings).up(["mlflow"])["mlflow"].url


@flow(name="prune-grid")  # no log_prints: Ray already forwards worker output
def prune_grid(config: str = "configs/demo.yaml") -> list[dict]:
    """Prepare data, fine-tune the teacher, prune the grid, evaluate, register and promote."""
    cfg = load_config(config)  # a bad config stops here, before any work
    settings = Settings.from_env()
    apply_offline_env(settings.allow_hub)
    ctx = open_grid(cfg, config, _tracking_uri(settings))
    started = cluster.connect(settings)
    frames: list[pd.DataFrame] = []
    failed: list[str] = []
    try:
        for task_spec in cfg.tasks:
            frames.append(_run_task(cfg, task_spec, ctx, failed))
    except BaseException as error:
        # Whatever already ran stays logged and registered; the grid run says why it stopped.
        close_grid(ctx, "", "", [f"{type(error).__name__}: {error}"])
        raise
    finally:
        cluster.disconnect(started)
    table = pd.concat(frames)
    markdown = report.to_markdown(table)
    close_grid(ctx, markdown, table.to_csv(index=False), failed)
    create_markdown_artifact(markdown, key=f"results-{cfg.name}".lower().replace("_", "-"),
                             description=f"prune-grid results for {cfg.name}")
    get_run_logger().info("Results of %s:\n%s\nMLflow: %s (experiment '%s')", cfg.name, markdown,
                          ctx.tracking_uri, cfg.name)
    if failed:
        raise GridFailed(f"{len(failed)} grid job(s) failed; the rest were registered:\n" + "\n".join(failed))
    return table.to_dict(orient="records")


class _Tasks:
    """The cached tasks, their results stored under this grid's PRUNEGRID_HOME/results."""

    def __init__(self, ctx) -> None:
        store = {"result_storage": cache.storage(ctx.home)}
        self.teacher = finetune_teacher.with_options(**store)
        self.distil = distil_student.with_options(**store)
        self.prune = prune.with_options(**store)
        self.evaluate = evaluate.with_options(**store)


def _maybe_refresh(task, refresh: bool):
    # A cached result is only a reference: if its model folder was deleted, train again.
    return task.with_options(refresh_cache=True) if refresh else task


def _fresh(task, ref, *args, **kwargs):
    """`ref`, or the task run again when the cached ref's model folder is gone."""
    if Path(ref.local_dir).is_dir():
        return ref
    return _maybe_refresh(task, True)(*args, **kwargs)


def _run_task(cfg, task_spec, ctx, failed: list[str]) -> pd.DataFrame:
    """One task's slice of the DAG; failed grid jobs are appended to `failed`."""
    run = _Tasks(ctx)
    dataset = prepare_dataset(task_spec, cfg.model, ctx)
    t_job = teacher_job(cfg, task_spec)
    teacher = _fresh(run.teacher, run.teacher(t_job, dataset, ctx), t_job, dataset, ctx)
    grid = expand_grid(cfg, task_spec)
    students = _distil_all(cfg, task_spec, grid, dataset, ctx, run, failed)
    ready = [job for job in grid if job.job_id in students or distil_job(cfg, task_spec, job) is None]
    trained = _window(ready, lambda job, refresh=False: _maybe_refresh(run.prune, refresh).submit(
        job, dataset, teacher, ctx, students.get(job.job_id)), failed)
    # Evaluate after all training so latency is measured on a quiet machine.
    teacher_record = run.evaluate(t_job, teacher, dataset, ctx, cfg.evaluation)
    records = [run.evaluate(job, ref, dataset, ctx, cfg.evaluation) for job, ref in trained]
    promotion = register_and_promote(task_spec.name, records, teacher_record, ctx, cfg.registry,
                                     cfg.grid.sparsities, task_spec.gate_metric(cfg.registry.gate))
    return report.results_frame(task_spec.name, [teacher_record, *records],
                                dict(promotion.aliases), dict(promotion.versions))


def _distil_all(cfg, task_spec, grid, dataset, ctx, run, failed: list[str]) -> dict:
    """Task-agnostic stages of two-stage methods, once per distinct stage job: grid job id -> student."""
    firsts = {job.job_id: d for job in grid if (d := distil_job(cfg, task_spec, job)) is not None}
    if not firsts:
        return {}
    text = prepare_corpus(cfg.distil, cfg.model, dataset, ctx)
    unique = list({d.job_id: d for d in firsts.values()}.values())
    submit = lambda d, refresh=False: _maybe_refresh(run.distil, refresh).submit(d, text, ctx)  # noqa: E731
    done = {d.job_id: ref for d, ref in _window(unique, submit, failed)}
    return {job_id: done[d.job_id] for job_id, d in firsts.items() if d.job_id in done}


def _window(jobs, submit, failed: list[str]) -> list:
    """Run jobs, as many at a time as the cluster holds; a failure spares the rest."""
    if not jobs:
        return []
    compute = jobs[0].compute
    slots = cluster.job_slots(compute.num_workers, compute.cpus_per_worker, compute.use_gpu)
    pending, running, trained = list(jobs), {}, []
    while pending or running:
        while pending and len(running) < slots:
            job = pending.pop(0)
            running[job] = submit(job)
        time.sleep(0.5)
        for job, future in list(running.items()):
            if not future.state.is_final():
                continue
            del running[job]
            if future.state.is_completed() and Path(future.result().local_dir).is_dir():
                trained.append((job, future.result()))
            elif future.state.is_completed():  # a cached ref whose model folder was deleted since
                running[job] = submit(job, refresh=True)
            else:
                failed.append(f"{job.label} ({job.job_id}): {future.state.message}")
    order = {job.job_id: i for i, job in enumerate(jobs)}
    return sorted(trained, key=lambda pair: order[pair[0].job_id])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.prune_grid", description=__doc__)
    parser.add_argument("config", nargs="?", default="configs/demo.yaml", help="experiment YAML")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    apply_offline_env(settings.allow_hub)  # before Prefect starts its API
    try:
        # A user's mistake stops here, before Prefect, Ray or MLflow start, in one line.
        preflight.check(load_config(args.config), None, settings.allow_hub)
        check_reachable(_tracking_uri(settings))
    except (ConfigError, DataError, ModelError, TrackingError, StackError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    state = prune_grid(args.config, return_state=True)
    if not state.is_completed():
        print(f"error: prune-grid did not complete: {state.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
