"""Failures on a real multi-node Ray cluster (several raylets on loopback, one machine).

(a) a training worker killed mid-job resumes from its checkpoint's step (not from 0) and
ends bit-identical to an uninterrupted run; (b) a node removed mid-job: the workers restart
on the others and finish, with the same masks on every rank; (d) retries exhausted: one
clear error naming the cause, the job's MLflow run FAILED with it, and no Ray actor left
behind (the same error fails the job's Prefect task: test_bad_input's NaN run checks that road).
"""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
import ray
from safetensors.torch import load_file

from infra.train import checkpoints
from infra import data
from infra.experiment import jobs
from infra.models import pretrained
from infra.track import tracking
from infra.train import ray_job
from infra.experiment.config import load_config
from infra.experiment.grid import expand_grid
from infra.experiment.jobs import GridContext
from infra.track.tracking import ModelRef, client
from infra.experiment.preflight import split_spec, task_source
from infra.train.cluster import ensure_bootstrap_file
from infra.experiment.settings import OFFLINE_ENV
from tests.integration.helpers import ROOT, TINY, free_port

pytestmark = pytest.mark.integration
TINY_BERT = str(ROOT / "tests/fixtures/tiny-bert")


@pytest.fixture(scope="module")
def cluster():
    """A head (no CPUs, so no training lands there) and three 1-CPU worker nodes."""
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every node on 127.0.0.1
    ray_constants.ENABLE_RAY_CLUSTER = False
    env = dict(OFFLINE_ENV, RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.5", RAY_TRAIN_ENABLE_PRINT_PATCH="0",
               RAY_TRAIN_ENABLE_PREEMPTION_WATCHER="0")
    os.environ.update(env)  # the Train controller runs with the driver's environment
    ensure_bootstrap_file()  # the dashboard (the state API lists actors) must not probe cloud metadata
    head = {"num_cpus": 0, "include_dashboard": True, "dashboard_host": "127.0.0.1",
            "dashboard_port": free_port()}
    nodes = Cluster(initialize_head=True, head_node_args=head)
    for _ in range(3):
        nodes.add_node(num_cpus=1)
    nodes.wait_for_nodes()
    ray.init(address=nodes.address, runtime_env={"env_vars": env})
    try:
        yield nodes
    finally:
        ray.shutdown()
        nodes.shutdown()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> data.DatasetRef:
    spec = load_config(TINY).tasks[0]
    spec = spec.model_copy(update={"path": str(ROOT / spec.path)})
    return data.prepare(task_source(spec), split_spec(spec), pretrained.load_tokenizer(TINY_BERT), 32,
                        tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> str:
    """A tiny classifier to prune (random weights: what is measured here is recovery, not accuracy)."""
    model = pretrained.load_classifier(TINY_BERT, num_labels=2, init="random", seed=0)
    out = tmp_path_factory.mktemp("teacher") / "model"
    return str(pretrained.save_model(model, pretrained.load_tokenizer(TINY_BERT), out))


@pytest.fixture
def args(dataset: data.DatasetRef, teacher: str) -> ray_job.JobArgs:
    # ~6 batches an epoch: 24 epochs are 144 steps, long enough to interrupt mid-job.
    return ray_job.JobArgs(
        job_id="recovery", method="gmp", sparsity=0.5, seed=0, options={"update_every": 4},
        data_path=dataset.path, pretrained=TINY_BERT, init="random", teacher_dir=teacher, epochs=24,
        batch_size=16, learning_rate=1e-3, weight_decay=0.01, warmup_fraction=0.0, max_grad_norm=1.0,
        checkpoint_every=20, log_every=1000)


def _run(args, tmp: Path, name: str, *, workers: int = 1, max_failures: int = 2) -> Path:
    return ray_job.run_job(args, run_name=name, num_workers=workers, cpus_per_worker=1, use_gpu=False,
                            max_failures=max_failures, storage_path=tmp / "ray", out_dir=tmp / name)


def _committed(root: Path) -> list[Path]:
    """Checkpoint folders Ray Train has committed (listed in a run's snapshot): Ray copies a
    reported checkpoint into storage file by file, so an uncommitted one may be half there."""
    found = []
    for snapshot in root.rglob("checkpoint_manager_snapshot.json"):
        try:
            state = json.loads(snapshot.read_text())
        except ValueError:
            continue  # being rewritten
        found += [snapshot.parent / r["checkpoint_dir_name"] for r in state["checkpoint_results"]]
    return found


def _first_checkpoint(run_dir: Path, timeout: float = 120) -> checkpoints.Position:
    deadline = time.monotonic() + timeout
    while not _committed(run_dir):
        assert time.monotonic() < deadline, f"no checkpoint committed in {run_dir}"
        time.sleep(0.05)
    return checkpoints.read_position(_committed(run_dir)[0])


def _checkpoint_count_reaches(root: Path, count: int, timeout: float = 120) -> None:
    """Wait until runs under `root` have written `count` checkpoints (training, not starting up)."""
    deadline = time.monotonic() + timeout
    while len({p.name for p in root.rglob("checkpoint_2*")} & {p.name for p in _committed(root)}) < count:
        assert time.monotonic() < deadline, f"{root}: fewer than {count} checkpoints"
        time.sleep(0.05)


def _workers(state: str = "ALIVE") -> list:
    from ray.util.state import list_actors

    filters = [("class_name", "=", "RayTrainWorker")] + ([("state", "=", state)] if state else [])
    return list_actors(filters=filters, limit=10_000)


def _running_workers(count: int, timeout: float = 120) -> list:
    """The job's `count` training workers once they are all up (listed before they are
    needed: the state API answers in about a second, a tiny job's steps take milliseconds)."""
    deadline = time.monotonic() + timeout
    while len(found := _workers()) < count:
        assert time.monotonic() < deadline, f"fewer than {count} training workers came up"
        time.sleep(0.1)
    return found


def _last_position(run_dir: Path) -> checkpoints.Position:
    return max((checkpoints.read_position(f) for f in _committed(run_dir)), key=lambda p: p.step)


def test_a_killed_worker_resumes_and_ends_bit_identical(cluster, args, tmp_path):
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(_run, args, tmp_path, "interrupted")
        (worker,) = _running_workers(1)
        at = _first_checkpoint(tmp_path / "ray" / "interrupted")
        os.kill(worker.pid, signal.SIGKILL)  # the worker process, as the OOM killer would
        # The uninterrupted twin runs meanwhile, on another node.
        straight = _run(replace(args, job_id="straight"), tmp_path, "straight", max_failures=0)
        interrupted = future.result(timeout=600)
    assert at.step < _last_position(tmp_path / "ray" / "interrupted").step  # killed mid-job
    # The attempt that finished began at a checkpoint's step, not at 0: Ray restarted the worker
    # and it resumed (a fresh seeded run from step 0 would end bit-identical too).
    resumed = json.loads(ray_job.timing_path(interrupted).read_text())["first_step"]
    assert resumed >= at.step > 0 and resumed % args.checkpoint_every == 0, resumed
    assert json.loads(ray_job.timing_path(straight).read_text())["first_step"] == 0
    a = load_file(str(straight / "model.safetensors"))
    b = load_file(str(interrupted / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(a[k].equal(b[k]) for k in a), [k for k in a if not a[k].equal(b[k])]


@pytest.mark.slow
def test_b_a_removed_node_moves_the_workers_and_masks_agree_across_ranks(cluster, args, tmp_path):
    # Two DDP workers share the steps: 48 epochs leave ~120 steps after the first checkpoint,
    # so the node goes while the job is still training (a finished job would prove nothing).
    args = replace(args, epochs=48)
    started_before = len(_workers(state=""))
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(_run, args, tmp_path, "node-lost", workers=2)
        hosts = {w.node_id for w in _running_workers(2)}
        lost = next(n for n in cluster.worker_nodes if n.node_id in hosts)
        _first_checkpoint(tmp_path / "ray" / "node-lost")
        cluster.remove_node(lost, allow_graceful=False)
        out = future.result(timeout=600)
    assert (out / "model.safetensors").is_file()
    end = _last_position(tmp_path / "ray" / "node-lost")
    assert len(_workers(state="")) - started_before >= 4  # the group was started again
    assert end.world_size == 2 and len(end.mask_checksums) == 2
    assert len(set(end.mask_checksums)) == 1  # both DDP ranks pruned exactly the same weights
    deadline = time.monotonic() + 60  # the GCS marks a node dead after its health checks fail
    while lost.node_id in {n["NodeID"] for n in ray.nodes() if n["Alive"]}:
        assert time.monotonic() < deadline, "the removed node is still listed alive"
        time.sleep(0.2)
    cluster.add_node(num_cpus=1)  # leave the cluster as the other tests expect it
    cluster.wait_for_nodes()


def test_d_retries_exhausted_fail_cleanly_and_leave_nothing_running(cluster, dataset, teacher, tmp_path,
                                                                     mlflow_server):
    cfg = load_config(TINY)
    job = expand_grid(cfg, cfg.tasks[0])[0]
    job = replace(job, train=job.train.model_copy(update={"epochs": 400}),  # killed twice mid-run
                  compute=job.compute.model_copy(update={"max_failures": 1}))
    uri = mlflow_server.url
    experiment = tracking.ensure_experiment(uri, "recovery-d")
    ctx = GridContext("recovery-d", uri, experiment, tracking.start_run(uri, experiment, "grid"),
                      str(tmp_path / "home"), TINY_BERT)
    teacher_ref = ModelRef("teacher", "", "model", teacher)
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(jobs.train, job, dataset, teacher_ref, ctx)
        for attempt in range(2):  # kill a training worker, once per attempt Ray makes
            _checkpoint_count_reaches(tmp_path / "home" / "ray_results", attempt + 1)
            (worker,) = _running_workers(1)
            os.kill(worker.pid, signal.SIGKILL)
        with pytest.raises(ray_job.TrainingError) as error:
            future.result(timeout=300)
    message = str(error.value)
    assert f"job {job.job_id}" in message and "died" in message, message
    (run,) = client(uri).search_runs([experiment], f"tags.job_id = '{job.job_id}'")
    assert run.info.status == "FAILED" and "died" in run.data.tags["error"]
    from ray.util.state import list_actors

    def train_actors() -> list:
        return [a.class_name for a in list_actors(filters=[("state", "=", "ALIVE")])
                if a.class_name in ("RayTrainWorker", "TrainController")]

    deadline = time.monotonic() + 60  # controllers exit after fit() returns, asynchronously
    while train_actors() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert train_actors() == []  # of this job, and of (a)'s and (b)'s
