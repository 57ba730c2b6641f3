"""Ctrl-C on `python -m flows.prune_grid` in the middle of a training job stops it cleanly: every
MLflow run ends (the interrupted ones KILLED), and no Ray process the flow started outlives it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from infra.track.tracking import client
from tests.integration.helpers import ROOT, descendants, flow_env, processes, running_job, write_config

pytestmark = pytest.mark.integration


def test_ctrl_c_mid_job_ends_every_run_and_leaves_no_ray_process(tmp_path, mlflow_server, request
                                                                  ) -> None:
    def long_teacher(d: dict) -> None:  # the first job, in a thread as every job: minutes long
        d["teacher"].update(epochs=400, log_every=1)

    config = write_config(tmp_path, "ctrl-c", long_teacher)
    ray_tmp = tempfile.mkdtemp(prefix="pg-stop-", dir="/tmp")  # unix sockets: a short path
    env = flow_env(tmp_path / "home", mlflow_server.url) | {"RAY_TMPDIR": ray_tmp}
    log = (tmp_path / "flow.log").open("w")
    # As from a terminal: SIGINT not ignored. A child inherits an ignored SIGINT (a fresh-clone
    # run's pytest worker had it ignored by then, and the flow then completed, deaf to Ctrl-C).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        flow = subprocess.Popen([sys.executable, "-m", "flows.prune_grid", str(config)], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        mlflow = client(mlflow_server.url)
        job = running_job(mlflow, "ctrl-c", time.monotonic() + 300)
        started = descendants(flow.pid)
        assert any("raylet" in c for c in started.values()), started
        masks = _sigint_masks(flow.pid)  # a thread that takes SIGINT: neither ignored nor blocked
        assert any(not blocked and not ignored for blocked, ignored in masks.values()), masks
        os.killpg(flow.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends: the whole group
        code = flow.wait(timeout=120)
    finally:
        if flow.poll() is None:
            os.killpg(flow.pid, signal.SIGKILL)
        log.close()
        request.addfinalizer(lambda: shutil.rmtree(ray_tmp, ignore_errors=True))
    output = (tmp_path / "flow.log").read_text()
    assert code == 130 and "error: interrupted" in output, output[-3000:]
    runs = mlflow.search_runs([mlflow.get_experiment_by_name("ctrl-c").experiment_id])
    statuses = {r.info.run_id: r.info.status for r in runs}
    assert "RUNNING" not in statuses.values(), (statuses, output[-3000:])
    assert statuses[job.info.run_id] == "KILLED", output[-3000:]
    # Whatever the flow started, in its session or below it, Ray's or Prefect's: gone.
    deadline = time.monotonic() + 30  # Ray's workers notice their raylet's end within seconds
    while (left := _left(started, flow.pid, ray_tmp)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, left


def _left(started: dict[int, str], session: int, ray_tmp: str) -> dict[int, str]:
    return {pid: command for pid, (_, sid, command) in processes().items()
            if pid in started or sid == session or ray_tmp in command}


def _sigint_masks(pid: int) -> dict[str, tuple[bool, bool]]:
    """Thread id -> (SIGINT blocked, SIGINT ignored) for every thread of `pid` (Linux /proc)."""
    bit, found = 1 << (signal.SIGINT - 1), {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = dict(line.split(":\t", 1) for line in (task / "status").read_text().splitlines()
                      if line.startswith(("SigBlk", "SigIgn")))
        found[task.name] = (bool(int(fields["SigBlk"], 16) & bit), bool(int(fields["SigIgn"], 16) & bit))
    return found
