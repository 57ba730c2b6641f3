"""One driver per experiment (infra.experiment.locks): a second one is refused naming the first,
and a holder that dies, even by kill -9, leaves no stale lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra.experiment import locks
from infra.experiment.locks import ExperimentBusy

ROOT = Path(__file__).resolve().parents[2]
# A driver elsewhere: takes the lock, says so, and keeps it until it is killed.
HOLDER = ("import sys, time\nfrom infra.experiment import locks\n"
          "with locks.hold(sys.argv[1], sys.argv[2]):\n    print('held', flush=True)\n"
          "    time.sleep(300)\n")
# Another driver trying its luck: exit 3 when refused.
TRY = ("import sys\nfrom infra.experiment import locks\ntry:\n"
       "    with locks.hold(sys.argv[1], sys.argv[2]):\n        pass\n"
       "except locks.ExperimentBusy:\n    sys.exit(3)\n")


def _holder(home: Path, experiment: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(home), experiment], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_driver_is_refused_naming_the_first_and_a_killed_holder_leaves_no_lock(
        tmp_path: Path) -> None:
    holder = _holder(tmp_path, "demo")
    try:
        with pytest.raises(ExperimentBusy, match=rf"experiment 'demo' is already running: pid "
                                                 rf"{holder.pid} on .*locks/demo\.lock.*kill {holder.pid}"):
            with locks.hold(tmp_path, "demo"):
                pass
        with locks.hold(tmp_path, "other"):  # another experiment runs meanwhile
            pass
    finally:
        holder.kill()  # SIGKILL: no cleanup code runs; the kernel drops the flock
        holder.wait()
    with locks.hold(tmp_path, "demo") as path:
        assert path == (tmp_path / "locks" / "demo.lock").resolve()
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_the_holder_takes_it_again_inside_and_others_only_after_it_lets_go(tmp_path: Path) -> None:
    def other_driver() -> int:
        return subprocess.run([sys.executable, "-c", TRY, str(tmp_path), "demo"], cwd=ROOT,
                              timeout=120).returncode

    with locks.hold(tmp_path, "demo"):
        with locks.hold(tmp_path, "demo"):  # the CLI's preflight, then its flow
            pass
        assert other_driver() == 3  # still held after the inner block
    assert other_driver() == 0
