"""The `prunegrid` command (flows/cli.py): its arguments, `results` and `ui` against a real MLflow
store (sqlite, no server), and `status` of a stack that is not running."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows import cli
from infra.track import tracking

TABLE_OLD = "| task | method | dev acc |\n|---|---|---|\n| rt | teacher | 0.81 |\n"
TABLE_NEW = "| task | method | dev acc |\n|---|---|---|\n| rt | gmp | 0.79 |\n"


def test_the_commands_and_their_defaults() -> None:
    parse = cli.parser().parse_args
    run = parse(["run"])
    assert (run.command, run.config, run.verbose) == ("run", "configs/demo.yaml", False)
    assert parse(["run", "configs/x.yaml", "--verbose"]).verbose
    assert parse(["results"]).experiment is None and parse(["results", "demo"]).experiment == "demo"
    assert parse(["ui", "demo"]).experiment == "demo"
    assert parse(["up"]).services == "mlflow,prefect-server,prefect-worker"  # what `make up` starts
    assert parse(["down"]).services is None  # all
    assert parse(["up", "--services", "mlflow"]).services == "mlflow"
    for argv in ([], ["train"], ["results", "a", "b"]):
        with pytest.raises(SystemExit) as stop:
            parse(argv)
        assert stop.value.code == 2


def _grid_run(uri: str, experiment_id: str, name: str, table: str | None) -> str:
    """A grid's parent run as tasks/grid.py leaves it: with its table, or stopped without one."""
    run = tracking.start_run(uri, experiment_id, name, tags={tracking.ROLE_TAG: tracking.GRID_ROLE})
    if table is not None:
        tracking.log_text(uri, run, table, "results.md")
    tracking.end_run(uri, run, ok=table is not None, error=None if table else "failed: ValueError")
    return run


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict[str, str]:
    """A sqlite MLflow store: experiment 'demo' (a finished grid, then a failed one without a
    table) and, newer, experiment 'other' (a finished grid)."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow = tracking.client(uri)
    ids = {name: mlflow.create_experiment(name, artifact_location=str(root / name))
           for name in ("demo", "other")}
    runs = {"demo_ok": _grid_run(uri, ids["demo"], "grid-demo", TABLE_OLD)}
    runs["demo_failed"] = _grid_run(uri, ids["demo"], "grid-demo", None)
    runs["other"] = _grid_run(uri, ids["other"], "grid-other", TABLE_NEW)
    return {"uri": uri, **{f"id_{k}": v for k, v in ids.items()}, **runs}


@pytest.fixture
def prunegrid(store, tmp_path, monkeypatch, capsys):
    """prunegrid(*argv) -> (exit code, stdout, stderr), with MLFLOW_TRACKING_URI on the store."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    monkeypatch.setenv("PRUNEGRID_HOME", str(tmp_path / "home"))

    def call(*argv: str) -> tuple[int, str, str]:
        code = cli.main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err
    return call


def test_results_prints_the_newest_table_of_an_experiment(prunegrid, store) -> None:
    code, out, _ = prunegrid("results", "demo")
    assert code == 0
    # The newest grid of 'demo' failed before its table: the one before it is shown, and named.
    assert TABLE_OLD.strip() in out and TABLE_NEW.strip() not in out
    assert out.startswith("Results of experiment 'demo', grid run grid-demo (FINISHED)")
    assert f"#/experiments/{store['id_demo']}/runs/{store['demo_ok']}?workflowType=machine_learning" in out


def test_results_without_an_experiment_shows_the_newest_grid_anywhere(prunegrid) -> None:
    code, out, _ = prunegrid("results")
    assert code == 0 and TABLE_NEW.strip() in out and "experiment 'other'" in out


def test_an_unknown_experiment_is_named_with_the_ones_there(prunegrid) -> None:
    code, out, err = prunegrid("results", "demo2")
    assert code == 1 and out == ""
    assert err.startswith("error: no experiment named 'demo2'") and "demo, other" in err


def test_ui_prints_the_address_and_the_experiment_s_page(prunegrid, store) -> None:
    code, out, _ = prunegrid("ui", "demo")
    assert code == 0
    assert out.splitlines() == [
        f"MLflow UI: {store['uri']}",
        f"experiment 'demo': {store['uri']}/#/experiments/{store['id_demo']}/runs?workflowType=machine_learning"]


def test_status_of_a_stack_that_is_not_running(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PRUNEGRID_HOME", str(tmp_path))
    assert cli.main(["status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split() for line in lines] == [[name, "down"] for name in
                                                ("mlflow", "prefect-server", "prefect-worker", "ray")]
    assert not (tmp_path / "stack").exists()  # asking starts nothing


def test_a_stack_that_is_not_running_lends_nothing(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PRUNEGRID_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert cli.use_stack(cli.LocalStack(tmp_path / "stack")) == {}
