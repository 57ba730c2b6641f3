"""Mistakes a user makes stop the run with one clear message, before any training."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from infra.track.tracking import client
from flows.prune_grid import main
from tests.integration.helpers import TINY, flow_env, run_grid

pytestmark = pytest.mark.integration


def _config(tmp_path: Path, name: str, change) -> Path:
    data = yaml.safe_load(TINY.read_text())
    data["name"] = name
    change(data)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _run(tmp_path: Path, config: Path, uri: str):
    """Run the CLI; return the process, its one `error:` line, and the run's home."""
    home = tmp_path / "home"
    proc = run_grid(config, flow_env(home, uri), timeout=300)
    lines = proc.stderr.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("error:")]
    assert len(starts) == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    return proc, "\n".join(lines[starts[0]:]), home


def _main(tmp_path: Path, config: Path, uri: str, capsys, monkeypatch):
    """The CLI's entry point in this process (preflight errors need no Prefect, Ray or MLflow)."""
    home = tmp_path / "home"
    for key, value in flow_env(home, uri).items():
        monkeypatch.setenv(key, value)
    code = main([str(config)])
    err = capsys.readouterr().err
    lines = err.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("error:")]
    assert len(starts) == 1 and "Traceback" not in err, err[-3000:]
    return code, "\n".join(lines[starts[0]:]), home


def _nothing_trained(home: Path) -> bool:
    return not (home / "ray_results").exists() and not (home / "models").exists()


def test_a_config_typo_names_the_field_and_starts_nothing(tmp_path, mlflow_server) -> None:
    config = _config(tmp_path, "typo", lambda d: d["grid"].__setitem__("sparsites", [0.5]))
    proc, out, home = _run(tmp_path, config, mlflow_server.url)
    assert proc.returncode == 2
    assert "grid.sparsites: unknown key" in out
    assert _nothing_trained(home)


def test_an_unknown_model_is_named(tmp_path, mlflow_server, capsys, monkeypatch) -> None:
    config = _config(tmp_path, "nomodel",
                     lambda d: d["model"].__setitem__("name", "models/does-not-exist"))
    code, out, home = _main(tmp_path, config, mlflow_server.url, capsys, monkeypatch)
    assert code == 2
    assert "unknown model 'models/does-not-exist'" in out
    assert _nothing_trained(home)


def test_a_missing_dataset_file_is_named_and_nothing_is_logged(tmp_path, mlflow_server, capsys, monkeypatch) -> None:
    missing = tmp_path / "missing.csv"
    config = _config(tmp_path, "nodata", lambda d: d["tasks"][0].__setitem__("path", str(missing)))
    code, out, home = _main(tmp_path, config, mlflow_server.url, capsys, monkeypatch)
    assert code == 2
    assert str(missing) in out
    assert _nothing_trained(home)
    assert client(mlflow_server.url).get_experiment_by_name("nodata") is None


def test_an_unexpected_label_value_is_named(tmp_path, mlflow_server, capsys, monkeypatch) -> None:
    bad = tmp_path / "bad_labels.csv"
    rows = (Path(TINY).parents[1] / "tiny_reviews.csv").read_text().splitlines()
    rows[5] = rows[5].rsplit(",", 1)[0] + ",7"
    bad.write_text("\n".join(rows) + "\n")
    config = _config(tmp_path, "badlabel", lambda d: d["tasks"][0].__setitem__("path", str(bad)))
    code, out, home = _main(tmp_path, config, mlflow_server.url, capsys, monkeypatch)
    assert code == 2
    last = out
    assert "7" in last and "label" in last
    assert _nothing_trained(home)


def test_an_unreachable_tracking_server_is_named(tmp_path, capsys, monkeypatch) -> None:
    config = _config(tmp_path, "noserver", lambda d: None)
    code, out, home = _main(tmp_path, config, "http://127.0.0.1:9", capsys, monkeypatch)
    assert code == 2
    assert "MLflow server http://127.0.0.1:9 is unreachable" in out
    assert _nothing_trained(home)


def test_a_nan_loss_stops_the_job_with_its_cause_and_closes_every_run(tmp_path, mlflow_server) -> None:
    def explode(d: dict) -> None:  # a learning rate no float32 survives: the loss turns NaN/inf
        d["teacher"]["learning_rate"] = 1.0e30
        d["teacher"]["warmup_fraction"] = 0.0

    config = _config(tmp_path, "nanloss", explode)
    home = tmp_path / "home"
    proc = run_grid(config, flow_env(home, mlflow_server.url), timeout=600)
    assert proc.returncode == 1
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert error and "loss is" in error[0] and "lower the learning rate" in error[0], proc.stderr[-3000:]
    mlflow = client(mlflow_server.url)
    runs = mlflow.search_runs([mlflow.get_experiment_by_name("nanloss").experiment_id])
    assert {r.info.status for r in runs} == {"FAILED"}  # the grid run and the teacher's: none RUNNING
    teacher = next(r for r in runs if r.data.tags.get("role") == "teacher")
    assert "loss is" in teacher.data.tags["error"]
