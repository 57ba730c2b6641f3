"""The training recipe from the config to the worker: per-method `prune_overrides` (SparseBERT's
constant 3e-5), the LR schedule keys, and the job ids they change (issue 14)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from infra.data import DatasetRef
from infra.experiment import jobs
from infra.experiment.config import ConfigError, parse_config
from infra.experiment.grid import JobSpec, expand_grid, teacher_job
from infra.train.job import JobArgs

ROOT = Path(__file__).resolve().parents[2]
SPARSEBERT = {"learning_rate": 3.0e-5, "lr_schedule": "constant", "warmup_fraction": 0.0}


def _demo(**top: object) -> dict:
    """configs/demo.yaml with GMP and SparseBERT for methods (the demo's other methods' options
    dropped), trained in fp32."""
    data = yaml.safe_load((ROOT / "configs/demo.yaml").read_text())
    data["grid"]["methods"] = ["gmp", "sparsebert"]
    data["grid"]["options"] = {k: v for k, v in data["grid"].get("options", {}).items() if k == "gmp"}
    data["compute"].pop("precision", None)
    return data | top


def _worker_args(job: JobSpec) -> JobArgs:
    """The arguments the flow hands each Ray worker of `job` (its paths made up)."""
    dataset = DatasetRef(task="t", path="/data", content_hash="h", num_labels=2, label_values=(0, 1),
                         sizes=())
    ctx = jobs.GridContext(experiment="demo", tracking_uri="file:///x", experiment_id="1",
                           parent_run_id="p", home="/home", pretrained="/model")
    return jobs.job_args(job, dataset, None, ctx, run_id=None)


def test_a_method_override_reaches_only_that_methods_jobs() -> None:
    cfg = parse_config(_demo(prune_overrides={"sparsebert": SPARSEBERT}))
    grid = expand_grid(cfg, cfg.tasks[0])
    sparsebert = [j for j in grid if j.method == "sparsebert"]
    gmp = [j for j in grid if j.method == "gmp"]
    assert sparsebert and gmp
    for job in sparsebert:
        recipe = (job.train.learning_rate, job.train.lr_schedule, job.train.warmup_fraction)
        assert recipe == (3e-5, "constant", 0.0)
        assert job.train.epochs == cfg.prune.epochs  # the keys not overridden stay prune's
    assert all(job.train == cfg.prune for job in gmp)
    plain = parse_config(_demo())
    before = {j.job_id: j.method for j in expand_grid(plain, plain.tasks[0])}
    assert {j.job_id for j in gmp} == {job_id for job_id, method in before.items() if method == "gmp"}
    assert not {j.job_id for j in sparsebert} & set(before)


@pytest.mark.parametrize("override, message", [
    ({"sparsebert": {"learning_rat": 3e-5}}, r"prune_overrides\.sparsebert: unknown key\(s\) \['learning_r"),
    ({"sparsebert": {"lr_schedule": "step"}}, r"prune_overrides\.sparsebert: lr_schedule: Input should be"),
    ({"sparsebert": {"min_lr_fraction": 1.5}}, r"prune_overrides\.sparsebert: min_lr_fraction"),
    ({"sdp": {"learning_rate": 1e-4}}, r"given for method 'sdp', which is not in grid\.methods"),
    ({"magic": {"learning_rate": 1e-4}}, r"prune_overrides\.magic"),
])
def test_a_bad_override_is_refused_by_name(override: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(_demo(prune_overrides=override))


def test_the_lr_schedule_is_a_config_key() -> None:
    data = _demo()
    data["prune"] |= {"lr_schedule": "cosine", "min_lr_fraction": 0.1}
    cfg = parse_config(data)
    assert (cfg.prune.lr_schedule, cfg.prune.min_lr_fraction) == ("cosine", 0.1)
    data["prune"]["lr_schedule"] = "exponential"
    with pytest.raises(ConfigError, match=r"prune\.lr_schedule"):
        parse_config(data)


def test_pruning_keeps_its_rate_and_the_teachers_schedule_and_id_stay() -> None:
    """prune:'s constant rate changes neither the teacher's schedule nor its id."""
    cfg = parse_config(_demo())
    assert (cfg.teacher.lr_schedule, cfg.teacher.min_lr_fraction) == ("linear", 0.0)
    assert "lr_schedule" not in cfg.teacher.model_dump()  # the values every old job trained with
    assert cfg.prune.lr_schedule == "constant" and cfg.prune.model_dump()["lr_schedule"] == "constant"
    data = _demo()
    data["prune"]["lr_schedule"] = "linear"  # the old recipe, spelled out: the old ids
    old = parse_config(data)
    assert teacher_job(cfg, cfg.tasks[0]).job_id == teacher_job(old, old.tasks[0]).job_id
    assert "lr_schedule" not in old.prune.model_dump()


def test_the_jobs_worker_arguments_carry_the_recipe() -> None:
    cfg = parse_config(_demo(prune_overrides={"sparsebert": SPARSEBERT}))
    job = next(j for j in expand_grid(cfg, cfg.tasks[0]) if j.method == "sparsebert")
    args = _worker_args(job)
    assert (args.learning_rate, args.lr_schedule, args.warmup_fraction, args.min_lr_fraction) == (
        3e-5, "constant", 0.0, 0.0)
    teacher = _worker_args(teacher_job(cfg, cfg.tasks[0]))
    assert (teacher.learning_rate, teacher.lr_schedule) == (5e-5, "linear")


def test_precision_is_a_compute_key_bf16_by_default_and_fp32_keeps_the_old_ids() -> None:
    bf16 = parse_config(_demo())
    assert bf16.compute.precision == "bf16"
    data = _demo()
    data["compute"]["precision"] = "fp32"
    fp32 = parse_config(data)
    task = fp32.tasks[0]
    old = [teacher_job(fp32, task), *expand_grid(fp32, task)]
    new = [teacher_job(bf16, task), *expand_grid(bf16, task)]
    assert all("precision" not in job.resolved() for job in old)  # as every job before the key
    assert all(job.resolved()["precision"] == "bf16" for job in new)
    assert not {j.job_id for j in old} & {j.job_id for j in new}
    data["compute"]["precision"] = "fp16"
    with pytest.raises(ConfigError, match=r"compute\.precision"):
        parse_config(data)
    assert _worker_args(new[1]).precision == "bf16" and _worker_args(old[1]).precision == "fp32"
