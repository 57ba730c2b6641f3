"""The claims report finds a config's grid run by the jobs it trained, against a real MLflow
store (sqlite, no server): a schema change that leaves every job as it was (a new field dumped
with its default) must not orphan the results already logged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra.evaluate.claims_report import TaskResults
from infra.experiment import claim_runs
from infra.experiment.config import load_config
from infra.experiment.grid import distil_job, expand_grid, teacher_job
from infra.track import tracking

CONFIG = Path(__file__).parents[2] / "configs" / "claims" / "1c-sdp-cc-target.yaml"


def _grid_run(uri: str, experiment: str, config_hash: str, job_ids: list[str]) -> str:
    """A finished grid run that logged one task's records with these models."""
    run = tracking.start_run(uri, experiment, "grid", tags={tracking.ROLE_TAG: tracking.GRID_ROLE,
                                                             "config_hash": config_hash})
    models = [{"job_id": j, "method": "gmp", "sparsity": 0.9, "seed": 0, "options": {}, "run_id": run,
               "metrics": {}} for j in job_ids]
    records = {"task": "rotten_tomatoes", "gate_metric": "dev_accuracy", "score": ["accuracy"],
               "members": ["test"], "train_examples": 10, "models": models}
    tracking.log_text(uri, run, json.dumps(records), "records-rotten_tomatoes.json")
    tracking.end_run(uri, run, ok=True)
    return run


def test_the_grid_run_is_the_newest_that_trained_exactly_this_configs_jobs(tmp_path) -> None:
    cfg = load_config(CONFIG)
    task = cfg.tasks[0]
    jobs = [teacher_job(cfg, task).job_id, *(j.job_id for j in expand_grid(cfg, task))]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = tracking.client(uri).create_experiment(cfg.name, artifact_location=str(tmp_path / "a"))

    # Logged by an older commit whose schema dumped the config differently: another config hash.
    ours = _grid_run(uri, experiment, "hash-of-an-older-schema", jobs)
    # Newer grid runs of the same experiment name that trained other jobs are not ours.
    _grid_run(uri, experiment, "another", [*jobs, "a-seed-added"])
    _grid_run(uri, experiment, "a-third", jobs[:1] + ["another-teachers-student"])

    assert claim_runs.grid_of(uri, cfg).run_id == ours


def test_a_config_none_of_whose_grid_runs_trained_its_jobs_is_named_with_the_fix(tmp_path) -> None:
    cfg = load_config(CONFIG)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = tracking.client(uri).create_experiment(cfg.name, artifact_location=str(tmp_path / "a"))
    _grid_run(uri, experiment, "x", ["not-one-of-its-jobs"])

    with pytest.raises(tracking.TrackingError, match=r"no finished grid run.*prunegrid run"):
        claim_runs.grid_of(uri, cfg)


def test_the_budget_counts_the_training_behind_a_grid_run_that_found_every_job_in_the_cache(tmp_path) -> None:
    """A refresh that resumed from the cache ends in a second; its report must still say what
    its models cost to train: each model's job run, and the task-agnostic stage they start from."""
    cfg = load_config(CONFIG.with_name("5a-homodistil-50pct-vs-gmp.yaml"))
    task = cfg.tasks[0]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow = tracking.client(uri)
    experiment = mlflow.create_experiment(cfg.name, artifact_location=str(tmp_path / "a"))
    minute, t0 = 60_000, 1_700_000_000_000

    def run(job_id: str, start: int, minutes: int, status: str = "FINISHED") -> str:
        made = mlflow.create_run(experiment, start_time=t0 + start * minute, tags={"job_id": job_id})
        mlflow.set_terminated(made.info.run_id, status, end_time=t0 + (start + minutes) * minute)
        return made.info.run_id

    stage = {d.job_id for j in expand_grid(cfg, task) if (d := distil_job(cfg, task, j))}
    assert len(stage) == 1  # one student that every seed fine-tunes
    (stage_id,) = stage
    run(stage_id, 0, 45)  # an older run of the same stage
    run(stage_id, 50, 20)  # the one the models start from
    run(stage_id, 75, 5, "FAILED")
    jobs = [teacher_job(cfg, task).job_id, *(j.job_id for j in expand_grid(cfg, task))]
    models = [{"job_id": j, "method": "gmp", "sparsity": 0.5, "seed": 0, "options": {},
               "run_id": run(j, 80 + 10 * i, 10), "metrics": {}} for i, j in enumerate(jobs)]
    run(stage_id, 200, 60)  # trained after these models: another refresh's
    records = {"task": task.name, "gate_metric": "dev_accuracy", "score": ["accuracy"],
               "members": ["test"], "train_examples": 6824, "models": models}
    tasks = [TaskResults.from_json(json.dumps(records))]

    seconds = claim_runs.training_seconds(uri, cfg, tasks)
    line = claim_runs.budget(cfg, tasks, wall_seconds=2.0, trained_seconds=seconds)

    assert seconds == (len(jobs) * 10 + 20) * 60  # 7 models of 10 min and the 20-min stage
    assert "Wall time of the grid run: 0 h 00 min; its models' training runs, summed: 1 h 30 min" in line
