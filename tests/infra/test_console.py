"""The console's lines (infra/train/console.py): a job's progress line, the grid's line and its
estimate of the training time left, and what the verbose switch lets through."""

from __future__ import annotations

import pytest

from infra.train import console


@pytest.mark.parametrize("seconds, text", [(0, "0 s"), (12.4, "12 s"), (59.6, "1m00s"), (185, "3m05s"),
                                           (3720, "1h02m"), (-3, "0 s")])
def test_durations_read_short(seconds: float, text: str) -> None:
    assert console.duration(seconds) == text


def test_a_job_line_names_the_job_and_its_step_loss_rate_and_time_left() -> None:
    name = console.job_name("gmp", 0.7)
    line = console.job_line(name, "1a2b3c4d5e6f", 5, 13, 0.41234, 2.0)
    assert line == "[gmp s=0.70 1a2b3c4d] step 5/13  loss 0.4123  2.00 steps/s  ~4 s left"
    assert console.job_line(name, "1a2b3c4d5e6f", 13, 13, 0.3, 2.0).endswith("2.00 steps/s")  # done
    assert console.job_name("dense", 0.0) == "teacher"
    assert console.job_name("homodistil", 0.5, "distil") == "homodistil-distil s=0.50"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_grid_line_counts_jobs_and_estimates_the_time_left() -> None:
    clock, lines = Clock(), []
    grid = console.GridProgress(total=5, clock=clock, emit=lines.append)
    grid.started("teacher-seed0")
    assert lines[-1] == "[grid] 0/5 jobs done, running: teacher-seed0 (0 s), estimating the time left"
    clock.now = 60.0
    grid.finished("teacher-seed0")
    assert lines[-1] == "[grid] 1/5 jobs done, ~4m00s of training left"  # 4 more of 60 s each
    grid.slots = 2  # two at a time: half the time
    grid.started("gmp-s50-seed0")
    grid.started("gmp-s90-seed0")
    clock.now = 90.0  # each has run 30 s of its expected 60
    assert grid.left_s() == pytest.approx((4 * 60 - 2 * 30) / 2)
    assert lines[-1].startswith("[grid] 1/5 jobs done, running: gmp-s50-seed0 (0 s), gmp-s90-seed0 (0 s)")
    grid.finished("gmp-s90-seed0", ok=False)
    assert lines[-1].startswith("[grid] 2/5 jobs done (1 failed), running: gmp-s50-seed0 (30 s)")


def test_a_cached_job_does_not_shorten_the_estimate() -> None:
    clock = Clock()
    grid = console.GridProgress(total=3, clock=clock, emit=lambda _: None)
    grid.started("teacher-seed0")
    clock.now = 0.1  # its result came from the cache
    grid.finished("teacher-seed0")
    assert grid.left_s() is None and "estimating" in grid.line()
    grid.started("gmp-s50-seed0")
    clock.now = 40.1
    grid.finished("gmp-s50-seed0")
    assert grid.left_s() == pytest.approx(40.0)
    grid.started("gmp-s90-seed0")
    clock.now = 80.1
    grid.finished("gmp-s90-seed0")
    assert grid.line() == "[grid] 3/3 jobs done, training done"


def test_quiet_turns_the_progress_bars_off_and_verbose_leaves_them(monkeypatch) -> None:
    quiet, verbose = console.worker_env(False), console.worker_env(True)
    assert quiet["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    assert quiet["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"
    assert verbose == {console.VERBOSE_ENV: "1"}
    assert console.ray_log_level(False) == "ERROR" and console.ray_log_level(True) == "INFO"
    monkeypatch.setenv(console.VERBOSE_ENV, "1")
    assert console.is_verbose()
    monkeypatch.delenv(console.VERBOSE_ENV)
    assert not console.is_verbose()


def test_a_job_past_the_mean_still_has_time_to_go() -> None:
    clock = Clock()
    grid = console.GridProgress(total=2, clock=clock, emit=lambda _: None)
    grid.started("teacher-seed0")
    clock.now = 50.0
    grid.finished("teacher-seed0")
    grid.started("gmp-s50-seed0")
    clock.now = 200.0  # three times the mean, still running
    assert grid.left_s() == pytest.approx(5.0)


def test_a_long_task_agnostic_stage_does_not_stand_for_the_short_jobs_after_it() -> None:
    """HomoDistil's stage ran 20 min; the three fine-tuning jobs after it take 3 min each, not 20."""
    clock, lines = Clock(), []
    grid = console.GridProgress(total=5, planned={"task": 4, "distil": 1}, clock=clock, emit=lines.append)
    grid.started("teacher-seed0")
    clock.now = 0.1  # from the cache
    grid.finished("teacher-seed0")
    grid.started("homodistil-distil-s50-seed0", stage="distil")
    clock.now = 1200.1
    grid.finished("homodistil-distil-s50-seed0")
    assert lines[-1] == "[grid] 2/5 jobs done, estimating the time left"  # no fine-tuning job timed yet
    grid.started("homodistil-s50-seed0")
    clock.now = 1380.1
    grid.finished("homodistil-s50-seed0")
    assert lines[-1] == "[grid] 3/5 jobs done, ~6m00s of training left"  # 2 more of 3 min each


def test_a_stage_not_yet_timed_is_named_beside_the_estimate() -> None:
    clock, lines = Clock(), []
    grid = console.GridProgress(total=4, planned={"task": 3, "distil": 1}, clock=clock, emit=lines.append)
    grid.started("teacher-seed0")
    clock.now = 240.0
    grid.finished("teacher-seed0")
    assert lines[-1] == "[grid] 1/4 jobs done, ~8m00s of training left, and 1 task-agnostic stage not yet timed"
