"""The `prune-grid` flow: data -> teacher -> pruning grid -> evaluation -> registry.

Run it with `prunegrid run configs/demo.yaml` (flows/cli.py) or `python -m flows.prune_grid
configs/demo.yaml`, or as the Prefect deployment `prune-grid/prune-grid` (prefect.yaml).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.cli import tracking_uri
from infra.data import DataError
from infra.evaluate import report
from infra.experiment import locks, preflight
from infra.experiment.config import ConfigError, ExperimentConfig, TaskSpec, load_config
from infra.experiment.grid import distil_job, expand_grid, teacher_job
from infra.experiment.settings import Settings, apply_offline_env
from infra.models.pretrained import ModelError
from infra.stack.local_stack import StackError
from infra.track import tracking
from infra.track.tracking import TrackingError, check_reachable, runs_url
from infra.train import cluster, console, stopping
from tasks.grid import close_grid, open_grid, summarise
from tasks.prepare import prepare_dataset
from tasks.promote import register_and_promote
from tasks.runner import GridRunner


# What a user's mistake raises before any work (config, data, model, servers): one line, exit 2.
USER_ERRORS = (ConfigError, DataError, ModelError, TrackingError, StackError)


class GridFailed(RuntimeError):
    """Some grid jobs failed; the others were evaluated, registered and promoted."""


@flow(name="prune-grid")  # no log_prints: Ray already forwards worker output
def prune_grid(config: str = "configs/demo.yaml") -> list[dict]:
    """Prepare data, fine-tune the teacher, prune the grid, evaluate, register and promote."""
    cfg = load_config(config)  # a bad config stops here, before any work
    settings = Settings.from_env()
    # One driver per experiment, for the flow's life: a second one stops here, naming the first,
    # before it could close the first one's MLflow runs or share its checkpoint folders.
    with locks.hold(settings.home, cfg.name):
        return _grid(cfg, config, settings)


def _grid(cfg: ExperimentConfig, config: str, settings: Settings) -> list[dict]:
    apply_offline_env(settings.allow_hub)
    console.quiet_driver(console.is_verbose())
    ctx = open_grid(cfg, config, tracking_uri(settings))
    with stopping.sigint_blocked():  # a Ray started here leaves Ctrl-C to this driver (stop_jobs)
        started = cluster.connect(settings)
    try:
        planned = _jobs_per_stage(cfg)
        progress = console.GridProgress(total=sum(planned.values()), planned=planned, emit=get_run_logger().info)
        runner = GridRunner.open(ctx, progress)
        parts = [_one_task(cfg, task_spec, runner) for task_spec in cfg.tasks]
        table, seeds = pd.concat([p[0] for p in parts]), pd.concat([p[1] for p in parts])
    except Exception as error:
        # Whatever already ran stays logged and registered; the grid run says why it stopped.
        close_grid(ctx, "", "", [f"{type(error).__name__}: {error}"])
        raise
    except BaseException as error:
        # Ctrl-C, a cancelled flow run: a job that ends from now on was stopped (KILLED, not
        # FAILED) and none restarts. The grid's runs end KILLED first (Prefect's worker kills a
        # cancelled run's processes after a grace period), then Ray's jobs are aborted. No task:
        # Prefect is stopping too. A rerun resumes the jobs from their checkpoints.
        stopping.refuse_jobs()
        tracking.kill_running(ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id,
                              f"stopped: {type(error).__name__} {error}".strip())
        stopping.stop_jobs()
        raise
    finally:
        cluster.disconnect(started)
    failed = runner.failed
    markdown = report.to_markdown(table)
    close_grid(ctx, markdown, table.to_csv(index=False), failed, seeds)
    create_markdown_artifact(markdown, key=f"results-{cfg.name}".lower().replace("_", "-"),
                             description=f"prune-grid results for {cfg.name}")
    get_run_logger().info("Results of %s:\n%s\nMLflow: %s (experiment '%s')", cfg.name, markdown,
                          runs_url(ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id), cfg.name)
    if failed:
        raise GridFailed(f"{len(failed)} grid job(s) failed; the rest were registered:\n" + "\n".join(failed))
    return table.to_dict(orient="records")


def _jobs_per_stage(cfg: ExperimentConfig) -> dict[str, int]:
    """Training jobs of the grid: per task its teacher and grid points ("task"), and its
    distinct task-agnostic stages ("distil")."""
    count = {"task": 0, "distil": 0}
    for task in cfg.tasks:
        grid = expand_grid(cfg, task)
        count["distil"] += len({d.job_id for job in grid if (d := distil_job(cfg, task, job)) is not None})
        count["task"] += 1 + len(grid)
    return count


def _one_task(cfg: ExperimentConfig, task_spec: TaskSpec, runner: GridRunner
              ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One task's slice of the DAG, stage by stage; failed grid jobs land in `runner.failed`.
    Returns its results table (one row per model) and its seed table (one per grid row)."""
    ctx = runner.ctx
    dataset = prepare_dataset(task_spec, cfg.model, ctx)                       # 1. prepare
    t_job = teacher_job(cfg, task_spec)
    teacher = runner.teacher(t_job, dataset)                                    # 2. teacher
    trained = runner.prune_grid(cfg, task_spec, dataset, teacher)              # 3. prune grid
    # 4. evaluate, after all training so latency is measured on a quiet machine
    teacher_record = runner.evaluate(t_job, teacher, dataset, cfg.evaluation)
    records = [runner.evaluate(job, ref, dataset, cfg.evaluation) for job, ref in trained]
    metric = task_spec.gate_metric(cfg.registry.gate)
    promotion = register_and_promote(                                          # 5. register, promote
        task_spec.name, records, teacher_record, ctx, cfg.registry, cfg.grid.sparsities, metric)
    seeds = summarise(task_spec.name, [teacher_record, *records], promotion,  # 6. seed table, figure
                      dataset, ctx, metric, cfg.registry.gate.max_drop)
    return report.results_frame(task_spec.name, [teacher_record, *records],
                                dict(promotion.aliases), dict(promotion.versions)), seeds


def _start_prefect_api() -> None:
    """Start Prefect's temporary API server (without PREFECT_API_URL) now, deaf to Ctrl-C: a
    server gone before the flow has ended its runs leaves the flow minutes of retries to report
    its end. Prefect stops it at this process's exit."""
    from prefect.client.orchestration import get_client

    with stopping.sigint_blocked():  # uvicorn installs its own handler: ignoring SIGINT would not do
        get_client(sync_client=True)  # starts the temporary server when no API URL is set


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.prune_grid", description=__doc__)
    parser.add_argument("config", nargs="?", default="configs/demo.yaml", help="experiment YAML")
    parser.add_argument("-v", "--verbose", action="store_true", help="Ray's start-up lines and the "
                        f"libraries' progress bars too (or {console.VERBOSE_ENV}=1)")
    args = parser.parse_args(argv)
    if args.verbose:
        os.environ[console.VERBOSE_ENV] = "1"  # Ray workers started from here inherit it
    settings = Settings.from_env()
    apply_offline_env(settings.allow_hub)  # before Prefect starts its API
    with contextlib.ExitStack() as held:
        try:
            # A user's mistake stops here, before Prefect, Ray or MLflow start, in one line;
            # so does a second driver of the experiment (the lock lasts till the flow's end).
            cfg = load_config(args.config)
            preflight.check(cfg, None, settings.allow_hub)
            held.enter_context(locks.hold(settings.home, cfg.name))
            check_reachable(tracking_uri(settings))
        except (*USER_ERRORS, locks.ExperimentBusy) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        _start_prefect_api()
        try:
            state = prune_grid(args.config, return_state=True)
        except KeyboardInterrupt:
            print("error: interrupted: the grid's MLflow runs ended KILLED and its Ray jobs stopped; "
                  "run the same command again to resume them from their last checkpoints",
                  file=sys.stderr)
            return 130  # a shell's code for a Ctrl-C
    if not state.is_completed():
        print(f"error: prune-grid did not complete: {state.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
