"""Mistakes a user makes stop `python -m flows.prune_grid` in preflight, before any work: one
clear `error:` line, exit code 2, nothing trained, no server started.

The CLI's entry point runs in this process, as `python -m flows.prune_grid CONFIG` would run it.
A mistake found only once training runs (a NaN loss) is in tests/integration/test_bad_input.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flows.prune_grid import main
from tests.integration.helpers import ROOT, TINY, flow_env, write_config

# Nothing listens on the discard port: a preflight that let a mistake through would stop at the
# tracking check (a different error) instead of starting the flow.
UNREACHABLE = "http://127.0.0.1:9"


def _main(tmp_path: Path, config: Path, uri: str, capsys: pytest.CaptureFixture,
          monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, Path]:
    """Run the CLI; return its exit code, its one `error:` line (and what follows) and the run's home."""
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


def test_a_config_typo_names_the_field_and_starts_nothing(tmp_path, capsys, monkeypatch) -> None:
    config = write_config(tmp_path, "typo", lambda d: d["grid"].__setitem__("sparsites", [0.5]))
    code, out, home = _main(tmp_path, config, UNREACHABLE, capsys, monkeypatch)
    assert code == 2
    assert "grid.sparsites: unknown key" in out
    assert _nothing_trained(home)


def test_an_unknown_model_is_named(tmp_path, capsys, monkeypatch) -> None:
    config = write_config(tmp_path, "nomodel",
                          lambda d: d["model"].__setitem__("name", "models/does-not-exist"))
    code, out, home = _main(tmp_path, config, UNREACHABLE, capsys, monkeypatch)
    assert code == 2
    assert "unknown model 'models/does-not-exist'" in out
    assert _nothing_trained(home)


def test_a_missing_dataset_file_is_named_and_nothing_is_logged(tmp_path, capsys, monkeypatch) -> None:
    missing = tmp_path / "missing.csv"
    config = write_config(tmp_path, "nodata", lambda d: d["tasks"][0].__setitem__("path", str(missing)))
    store = tmp_path / "mlflow.db"  # a tracking store MLflow would create on its first write
    code, out, home = _main(tmp_path, config, f"sqlite:///{store}", capsys, monkeypatch)
    assert code == 2
    assert str(missing) in out
    assert _nothing_trained(home)
    assert not store.exists()


def test_an_unexpected_label_value_is_named(tmp_path, capsys, monkeypatch) -> None:
    bad = tmp_path / "bad_labels.csv"
    rows = (TINY.parents[1] / "tiny_reviews.csv").read_text().splitlines()
    rows[5] = rows[5].rsplit(",", 1)[0] + ",7"
    bad.write_text("\n".join(rows) + "\n")
    config = write_config(tmp_path, "badlabel", lambda d: d["tasks"][0].__setitem__("path", str(bad)))
    code, out, home = _main(tmp_path, config, UNREACHABLE, capsys, monkeypatch)
    assert code == 2
    assert "7" in out and "label" in out
    assert _nothing_trained(home)


def test_an_unreachable_tracking_server_is_named(tmp_path, capsys, monkeypatch) -> None:
    config = write_config(tmp_path, "noserver", lambda d: None)
    code, out, home = _main(tmp_path, config, UNREACHABLE, capsys, monkeypatch)
    assert code == 2
    assert f"MLflow server {UNREACHABLE} is unreachable" in out
    assert _nothing_trained(home)


def test_a_second_driver_of_the_experiment_is_refused_naming_the_first(tmp_path, capsys,
                                                                       monkeypatch) -> None:
    config = write_config(tmp_path, "busy", lambda d: None)
    home = tmp_path / "home"
    home.mkdir()
    holder = subprocess.Popen(  # the first driver, still running
        [sys.executable, "-c", "import sys, time\nfrom infra.experiment import locks\n"
         "with locks.hold(sys.argv[1], 'busy'):\n    print('held', flush=True)\n    time.sleep(300)\n",
         str(home)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        code, out, home = _main(tmp_path, config, UNREACHABLE, capsys, monkeypatch)
    finally:
        holder.kill()
        holder.wait()
    assert code == 2  # before the tracking check: the same unreachable server is not named
    assert f"experiment 'busy' is already running: pid {holder.pid}" in out
    assert _nothing_trained(home)
