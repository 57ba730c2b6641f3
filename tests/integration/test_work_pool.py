"""The worker image's entry point against a real Prefect server: it creates the work pool
from infra/stack/prefect/work-pool.json (prefect.yaml's deployment itself: test_deployment.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra.stack.local_stack import ServiceInfo

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
POOL = "prunegrid-pool-check"  # not the deployment test's pool: this one must be new


def test_worker_entrypoint_creates_the_pool_from_its_template(prefect_server: ServiceInfo) -> None:
    bindir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {
        "PREFECT_API_URL": f"{prefect_server.url}/api", "PRUNEGRID_ROOT": str(ROOT),
        "PRUNEGRID_WORK_POOL": POOL, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["sh", str(ROOT / "docker" / "prefect-worker-entrypoint.sh"), "worker",
                           "--run-once"], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    shown = subprocess.run([str(bindir / "prefect"), "work-pool", "inspect", POOL, "--output", "json"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr[-2000:]
    pool = json.loads(shown.stdout)
    template = json.loads((ROOT / "infra" / "stack" / "prefect" / "work-pool.json").read_text())
    assert pool["type"] == "process"
    assert pool["base_job_template"]["variables"]["properties"]["env"]["default"] == \
        template["variables"]["properties"]["env"]["default"]
