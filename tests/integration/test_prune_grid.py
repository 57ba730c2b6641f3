"""The whole prune-grid DAG with every pruning method (GMP, SDP, SparseBERT, HomoDistil) on the
tiny model, against a real MLflow server, Ray and Prefect: one traced run, read by every test."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from infra.experiment.config import load_config
from infra.track import registry
from infra.track.tracking import ModelRef, client
from tests.integration.helpers import (ROOT, dns_questions, flow_env, non_loopback_questions,
                                       off_loopback, remote_addresses, run_grid)

pytestmark = pytest.mark.integration
METHODS = ROOT / "tests/fixtures/configs/tiny-methods.yaml"
MODEL = "tiny-methods-tiny_reviews"  # registry.model_name of that config
EXPERIMENT = "tiny-methods"
LABELS = {"gmp": "gmp-s70-seed0-update_every=2", "sdp": "sdp-s70-seed0-update_every=2",
          "sparsebert": "sparsebert-s70-seed0"}
HOMODISTIL = "homodistil-s70-seed0-update_every=2"
# The gate the run promoted under, read from the config it ran: the tests follow the config.
CONFIG = load_config(METHODS)
GATE = CONFIG.registry.gate
METRIC = CONFIG.tasks[0].gate_metric(GATE)  # the dev metric tag the gate compares


def _candidate(version: str, tags: dict[str, str]) -> registry.Candidate:
    return registry.Candidate(version, tags["job_id"], float(tags["target_sparsity"]),
                              float(tags["encoder_sparsity"]), float(tags[METRIC]))


@pytest.fixture(scope="module")
def grid_run(mlflow_server, tmp_path_factory):
    """One traced run of the tiny grid with every method; the tests below read what it left."""
    home = tmp_path_factory.mktemp("grid")
    trace = home / "connect.trace"
    proc = run_grid(METHODS, flow_env(home, mlflow_server.url), trace=trace)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return {"proc": proc, "trace": trace, "uri": mlflow_server.url, "home": home}


def test_the_run_ends_with_a_results_table(grid_run) -> None:
    out = grid_run["proc"].stdout + grid_run["proc"].stderr
    assert "| task | method | target | encoder sparsity | dev acc | test acc |" in out
    for method in ("teacher", "gmp", "sdp", "sparsebert", "homodistil"):
        assert out.count(f"| tiny_reviews | {method} |") == 1, method


def test_the_console_shows_the_grid_and_each_job_and_not_ray_s_own_lines(grid_run) -> None:
    """Quiet by default (PRUNEGRID_VERBOSE unset): what a user reads is the grid's progress and
    a line per job and log interval; Ray's start-up and checkpoint lines, worker prefixes and
    the libraries' progress bars are left to --verbose."""
    out = grid_run["proc"].stdout + grid_run["proc"].stderr
    assert re.search(r"^\[gmp s=0\.70 [0-9a-f]{8}\] step 5/18  loss \d\.\d{4}  [\d.]+ steps/s", out, re.M), out[-3000:]
    assert re.search(r"^\[teacher [0-9a-f]{8}\] step 120/120  loss ", out, re.M)
    first = re.search(r"\[grid\] 0/(\d+) jobs done, running: teacher-seed0", out)
    assert first, out[-3000:]
    assert f"[grid] {first.group(1)}/{first.group(1)} jobs done, training done" in out
    for noise in ("Requesting resources", "Setting up process group", "Started training worker group",
                  "RayTrainWorker pid=", "TrainController pid=", "Checkpoint successfully created at",
                  "Reporting training result", "Loading weights", "Writing model shards",
                  "Downloading artifacts", "View run", "repeated", "Started a local Ray instance"):
        assert noise not in out, f"{noise!r} on a quiet console"


def test_every_model_is_registered_with_its_metrics(grid_run) -> None:
    versions = client(grid_run["uri"]).search_model_versions(f"name = '{MODEL}'")
    by_label = {v.tags["label"]: v for v in versions}
    assert set(by_label) == {"teacher-seed0", *LABELS.values(), HOMODISTIL}
    for version in versions:
        for key in ("dev_accuracy", "test_accuracy", "encoder_sparsity", "model_nonzero_params",
                    "size_mb", "latency_ms_b1", "job_id"):
            assert key in version.tags, (version.version, key)
    s70 = by_label[LABELS["gmp"]].tags
    teacher = by_label["teacher-seed0"].tags
    assert float(s70["model_nonzero_params"]) < 0.6 * float(teacher["model_nonzero_params"])
    assert float(teacher["dev_accuracy"]) > 0.8, "the tiny teacher should learn the synthetic task"


def test_champion_passes_the_gate_at_the_highest_passing_sparsity(grid_run) -> None:
    mlflow = client(grid_run["uri"])
    aliases = mlflow.get_registered_model(MODEL).aliases
    assert "champion" in aliases
    versions = {v.version: v.tags for v in mlflow.search_model_versions(f"name = '{MODEL}'")}
    teacher = next(t for t in versions.values() if t["method"] == "dense")
    for alias, version in aliases.items():
        assert versions[version]["passed_gate"] == "true", alias
        assert registry.passes_gate(_candidate(version, versions[version]), float(teacher[METRIC]),
                                    GATE.max_drop), alias
    passing = [float(t["target_sparsity"]) for t in versions.values() if t["passed_gate"] == "true"]
    assert float(versions[aliases["champion"]]["target_sparsity"]) == max(passing)
    for version, tags in versions.items():
        if tags["passed_gate"] == "false":
            assert version not in aliases.values()


def test_champion_loads_with_transformers_in_a_fresh_process(grid_run, tmp_path) -> None:
    path = registry.download(grid_run["uri"], MODEL, "champion", tmp_path / "champion")
    script = (
        "import json, sys, torch\n"
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
        "m = AutoModelForSequenceClassification.from_pretrained(sys.argv[1]).eval()\n"
        "t = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "x = t(['a truly wonderful film .', 'a dull and boring mess .'], return_tensors='pt', padding=True)\n"
        "with torch.no_grad(): print(json.dumps(m(**x).logits.argmax(-1).tolist()))\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True,
                         timeout=120, check=True)
    assert len(json.loads(out.stdout.strip().splitlines()[-1])) == 2
    assert (Path(path) / "model.safetensors").is_file()


def test_promoting_twice_changes_nothing(grid_run) -> None:
    mlflow = client(grid_run["uri"])
    before = dict(mlflow.get_registered_model(MODEL).aliases)
    versions = mlflow.search_model_versions(f"name = '{MODEL}'")
    for v in versions:  # registering the same run again returns the same version
        ref = ModelRef(v.tags["job_id"], v.run_id, "model", "")
        assert registry.register(grid_run["uri"], MODEL, ref, {}) == v.version
    candidates = [_candidate(v.version, v.tags) for v in versions]
    teacher = next(float(v.tags[METRIC]) for v in versions if v.tags["method"] == "dense")
    chosen = registry.choose(candidates, teacher, GATE.max_drop)
    registry.promote(grid_run["uri"], MODEL, chosen, list(before), scope=CONFIG.name)
    assert dict(mlflow.get_registered_model(MODEL).aliases) == before
    assert len(mlflow.search_model_versions(f"name = '{MODEL}'")) == len(versions)


def test_job_runs_are_nested_under_the_grid_run_and_finished(grid_run) -> None:
    mlflow = client(grid_run["uri"])
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    runs = mlflow.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("role") == "grid"]
    assert parents and all(r.info.status == "FINISHED" for r in runs)
    parent = parents[0].info.run_id
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]
    assert {r.data.tags["role"] for r in children} == {"teacher", "pruned", "distilled"}
    for run in children:  # the task-agnostic stage (distilled) is not evaluated on the task
        assert "train_loss" in run.data.metrics, run.data.tags["role"]
        assert ("dev_accuracy" in run.data.metrics) == (run.data.tags["role"] != "distilled")
        assert run.data.params["data_hash"]


def test_the_run_connects_only_to_loopback(grid_run) -> None:
    """No connection leaves loopback: no hub, no telemetry, no cloud-metadata probe.

    Known exception, asserted narrowly: torch.distributed's TCPStore formats its peer
    address (::ffff:127.0.0.1) with getnameinfo, which asks the system resolver for the
    reverse name of 127.0.0.1. Any other DNS question (a hub or metadata host) fails.
    """
    addresses = remote_addresses(grid_run["trace"])
    assert any(a.startswith("127.") for a in addresses), "the trace saw no connection at all"
    resolvers = {line.split()[-1] for line in Path("/etc/resolv.conf").read_text().splitlines()
                 if line.startswith("nameserver")}
    assert not off_loopback(addresses) - resolvers, f"connections off this machine: {off_loopback(addresses)}"
    assert not non_loopback_questions(dns_questions(grid_run["trace"]))


def test_the_grid_run_holds_the_trade_off_figure_and_the_seed_table(grid_run, tmp_path) -> None:
    mlflow = client(grid_run["uri"])
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on runs
    runs = mlflow.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("role") == "grid")
    files = {f.path for f in mlflow.list_artifacts(parent.info.run_id)}
    assert {"tradeoff-tiny_reviews.png", "results_seeds.md", "results_seeds.csv"} <= files
    table = Path(mlflow.download_artifacts(parent.info.run_id, "results_seeds.md", str(tmp_path))).read_text()
    assert "| tiny_reviews | gmp | update_every=2 | 0.70 | 1 | accuracy |" in table
    assert "tiny_reviews/gmp_s70_dev_accuracy" in parent.data.metrics  # MLflow's chart view has the grid
    pruned = next(r for r in runs if r.data.tags.get("role") == "pruned")
    path = mlflow.download_artifacts(pruned.info.run_id, "predictions.parquet", str(tmp_path))
    predictions = pq.read_table(path)
    assert predictions.column_names == ["split", "example_id", "label", "prediction", "score"]
    assert set(predictions["split"].to_pylist()) == {"dev", "test"}
    out = grid_run["proc"].stdout + grid_run["proc"].stderr
    assert f"#/experiments/{experiment.experiment_id}/runs/{parent.info.run_id}?workflowType=machine_learning" in out


def test_every_method_is_registered_at_its_target_sparsity(grid_run, tmp_path) -> None:
    mlflow = client(grid_run["uri"])
    versions = {v.tags["label"]: v for v in mlflow.search_model_versions(f"name = '{MODEL}'")}
    for method, label in LABELS.items():
        tags = versions[label].tags
        assert tags["method"] == method
        assert float(tags["encoder_sparsity"]) == pytest.approx(0.7, abs=1e-3), method
        for key in ("dev_accuracy", "weight_snr", "separability_fisher", "separability_silhouette"):
            assert key in tags, (method, key)
        # The recovery curve rides along as an artifact of the job's run.
        run_id = versions[label].run_id
        names = {a.path for a in mlflow.list_artifacts(run_id)}
        assert "recovery.json" in names, (method, names)
        curve = json.loads(Path(mlflow.download_artifacts(run_id, "recovery.json", str(tmp_path)))
                           .read_text())
        assert curve["records"] and all("before" in r and r["after"] for r in curve["records"])
    teacher_runs = {a.path for a in mlflow.list_artifacts(versions["teacher-seed0"].run_id)}
    assert "recovery.json" not in teacher_runs  # dense fine-tuning has no mask updates

    # HomoDistil: a physically smaller dense model within its parameter budget (30% kept),
    # fine-tuned from the compact student its task-agnostic stage distilled.
    compact = versions[HOMODISTIL]
    teacher_params = float(versions["teacher-seed0"].tags["model_nonzero_params"])
    assert float(compact.tags["model_nonzero_params"]) <= 0.3 * teacher_params * 1.02
    folder = Path(mlflow.download_artifacts(compact.run_id, "model", str(tmp_path / "compact")))
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "compact-bert" and config["hidden_size"] < 32
