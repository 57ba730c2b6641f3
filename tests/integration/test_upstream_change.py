"""A change upstream of a job (the teacher it prunes) trains it again, and no rerun hands back
the weights of a finished run: real local Ray, a real MLflow server, the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
from safetensors.torch import load_file

from infra import data
from infra.experiment import jobs
from infra.experiment.config import load_config
from infra.experiment.grid import expand_grid, teacher_job
from infra.experiment.jobs import GridContext
from infra.experiment.preflight import split_spec, task_source
from infra.experiment.settings import Settings
from infra.models import pretrained
from infra.track import tracking
from infra.track.tracking import client
from infra.train import cluster
from tests.integration.helpers import ROOT, TINY

pytestmark = pytest.mark.integration
TINY_BERT = str(ROOT / "tests/fixtures/tiny-bert")


@pytest.fixture(scope="module")
def local_ray():
    started = cluster.connect(Settings.from_env(), num_cpus=1)
    try:
        yield
    finally:
        cluster.disconnect(started)
        assert not ray.is_initialized()


def _dataset(folder: Path) -> data.DatasetRef:
    spec = load_config(TINY).tasks[0]
    spec = spec.model_copy(update={"path": str(ROOT / spec.path)})
    return data.prepare(task_source(spec), split_spec(spec), pretrained.load_tokenizer(TINY_BERT), 32,
                        folder)


def _weights(ref: tracking.ModelRef) -> dict:
    return load_file(str(Path(ref.local_dir) / "model.safetensors"))


@pytest.mark.slow  # trains the teacher and the grid twice: a drill of the slow tier
def test_a_changed_teacher_retrains_the_grid_and_a_rerun_never_restores_a_finished_run(
        local_ray, mlflow_server, tmp_path):
    base = load_config(TINY)
    dataset = _dataset(tmp_path / "data")
    uri = mlflow_server.url
    experiment = tracking.ensure_experiment(uri, "upstream-change")
    ctx = GridContext("upstream-change", uri, experiment, tracking.start_run(uri, experiment, "grid"),
                      str(tmp_path / "home"), TINY_BERT)
    pruned = []
    for epochs in (1.0, 2.0):  # the user edits `teacher.epochs` and runs the experiment again
        cfg = base.model_copy(update={"teacher": base.teacher.model_copy(update={"epochs": epochs}),
                                      "prune": base.prune.model_copy(update={"epochs": 1.0})})
        task = cfg.tasks[0]
        teacher = jobs.train(teacher_job(cfg, task), dataset, None, ctx)
        job = expand_grid(cfg, task)[0]
        pruned.append((job, teacher, jobs.train(job, dataset, teacher, ctx)))
    (job_a, _, first), (job_b, teacher, second) = pruned
    assert job_a.job_id == job_b.job_id  # the pruning job's own settings did not change...
    a, b = _weights(first), _weights(second)
    assert any(not a[k].equal(b[k]) for k in a)  # ...but it pruned another teacher
    assert first.local_dir != second.local_dir  # and the first result stays as it was

    # PREFECT_TASKS_REFRESH_CACHE=true reruns the same job: it trains again (a loss curve),
    # it does not restore the finished run's final checkpoint.
    again = jobs.train(job_b, dataset, teacher, ctx)
    history = client(uri).get_metric_history(again.run_id, "train_loss")
    assert history and min(m.step for m in history) < max(m.step for m in history)
    c = _weights(again)
    assert all(b[k].equal(c[k]) for k in b)  # the same job on the same inputs: the same weights
