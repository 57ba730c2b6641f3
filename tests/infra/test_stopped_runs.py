"""A grid stopped by its driver (Ctrl-C, a cancelled flow run) ends its runs KILLED, against a
real MLflow store (sqlite, no server)."""

from __future__ import annotations

from infra.track import tracking


def test_kill_running_ends_the_grid_and_its_running_jobs_and_leaves_the_rest(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = tracking.client(uri).create_experiment("stopped", artifact_location=str(tmp_path / "a"))
    grid = tracking.start_run(uri, experiment, "grid", tags={tracking.ROLE_TAG: tracking.GRID_ROLE})
    done, failed, running = (tracking.start_run(uri, experiment, name, parent_run_id=grid)
                             for name in ("done", "failed", "running"))
    other = tracking.start_run(uri, experiment, "another grid's job")
    tracking.end_run(uri, done, ok=True)
    tracking.end_run(uri, failed, ok=False, error="loss is nan")

    killed = tracking.kill_running(uri, experiment, grid, "stopped: KeyboardInterrupt")

    assert sorted(killed) == sorted([running, grid])
    status = {run: tracking.client(uri).get_run(run).info.status for run in (done, failed, running, grid, other)}
    assert status == {done: "FINISHED", failed: "FAILED", running: "KILLED", grid: "KILLED", other: "RUNNING"}
    assert tracking.client(uri).get_run(running).data.tags["error"] == "stopped: KeyboardInterrupt"
