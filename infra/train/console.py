"""What a user watching a grid reads: its progress and one line per running job, nothing else.

A quiet console shows the grid's progress (jobs done of all, the running ones, an estimate of
the training time left), one line per running job per log interval (step, loss, steps/s), the
errors and the results table. `PRUNEGRID_VERBOSE=1` (`prunegrid run --verbose`) brings back
what the libraries print on their own: Ray's start-up lines and worker prefixes, Ray Train's
checkpoint and report lines, and the progress bars of transformers, huggingface_hub and MLflow.
No work at import; `driver_env`/`worker_env` are applied by infra.train.cluster.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

VERBOSE_ENV = "PRUNEGRID_VERBOSE"

# Progress bars: transformers' "Loading weights" / "Writing model shards" (it reads
# huggingface_hub's switch at import), MLflow's "Downloading artifacts"; MLflow's
# "View run ... at" lines after each run.
_QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
              "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


def is_verbose() -> bool:
    """Whether the user asked for the libraries' own output (PRUNEGRID_VERBOSE=1)."""
    return os.environ.get(VERBOSE_ENV, "0") == "1"


def worker_env(verbose: bool) -> dict[str, str]:
    """Variables for every process of a grid (Ray workers and the driver): the switch itself,
    and, when quiet, the progress bars and MLflow's run links off."""
    return {VERBOSE_ENV: "1" if verbose else "0"} | ({} if verbose else dict(_QUIET_ENV))


def quiet_driver(verbose: bool) -> None:
    """This process's share: the switches above (user's values win), MLflow's INFO lines
    ("Waiting up to 300 seconds for model version...") only when verbose."""
    for key, value in worker_env(verbose).items():
        os.environ.setdefault(key, value)
    logging.getLogger("mlflow").setLevel(logging.INFO if verbose else logging.WARNING)
    if not verbose:
        from transformers.utils import logging as hf_logging  # read its switch at import: set it now
        hf_logging.disable_progress_bar()


def ray_log_level(verbose: bool) -> str:
    """Ray's and Ray Train's level: their start-up, checkpoint and report lines are INFO, and a
    busy machine's "Failed to send resource request" WARNING; errors always show."""
    return "INFO" if verbose else "ERROR"


# ---------------------------------------------------------------- lines


def duration(seconds: float) -> str:
    """12 s, 3m05s, 1h02m: short enough for a progress line."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def job_name(method: str, sparsity: float, stage: str = "task") -> str:
    """'teacher', 'gmp s=0.70', 'homodistil-distil s=0.50': what a job is, in a few characters."""
    if method == "dense" and stage == "task":
        return "teacher"
    return f"{method}{'-distil' if stage == 'distil' else ''} s={sparsity:.2f}"


def job_line(name: str, job_id: str, step: int, total: int, loss: float, steps_per_s: float) -> str:
    """One running job's progress: '[gmp s=0.70 1a2b3c4d] step 5/13  loss 0.4123  1.92 steps/s  ~4 s left'."""
    left = (total - step) / steps_per_s if steps_per_s > 0 else None
    eta = f"  ~{duration(left)} left" if left is not None and step < total else ""
    return (f"[{name} {job_id[:8]}] step {step}/{total}  loss {loss:.4f}  "
            f"{steps_per_s:.2f} steps/s{eta}")


@dataclass
class GridProgress:
    """Jobs done of all, the running ones, and the training time left, for one grid.

    The estimate, per stage ("task": the teacher and grid points; "distil": task-agnostic
    stages, far longer): the mean time of its jobs that ran (a cached job, done in under
    `min_job_s`, says nothing about the others) times its jobs not yet done, less what its
    running ones have already spent, over the jobs running side by side. A stage none of whose
    jobs has trained yet is named beside the estimate, not guessed from another stage's.
    """

    total: int
    planned: dict[str, int] | None = None  # jobs per stage; None: all are "task" jobs
    slots: int = 1
    min_job_s: float = 2.0
    clock: Callable[[], float] = time.monotonic
    emit: Callable[[str], None] = print
    running: dict[str, tuple[float, str]] = field(default_factory=dict)  # job -> (started at, stage)
    durations: dict[str, list[float]] = field(default_factory=dict)  # per stage, of jobs that trained
    finished_by_stage: dict[str, int] = field(default_factory=dict)  # jobs done, per stage
    failed: int = 0

    @property
    def done(self) -> int:
        return sum(self.finished_by_stage.values())

    def started(self, job: str, stage: str = "task") -> None:
        self.running[job] = (self.clock(), stage)
        self.emit(self.line())

    def finished(self, job: str, ok: bool = True) -> None:
        began, stage = self.running.pop(job, (self.clock(), "task"))
        took = self.clock() - began
        self.failed += not ok
        self.finished_by_stage[stage] = self.finished_by_stage.get(stage, 0) + 1
        if ok and took >= self.min_job_s:
            self.durations.setdefault(stage, []).append(took)
        self.emit(self.line())

    def _stages(self) -> dict[str, int]:
        """Jobs not yet done, per stage."""
        planned = self.planned or {"task": self.total}
        return {stage: max(0, n - self.finished_by_stage.get(stage, 0)) for stage, n in planned.items()}

    def untimed(self) -> dict[str, int]:
        """Jobs left of each stage none of whose jobs has trained yet."""
        return {stage: n for stage, n in self._stages().items() if n and not self.durations.get(stage)}

    def left_s(self) -> float | None:
        """Training time left in the stages already timed, or None until a job has trained."""
        if not self.durations:
            return None
        now, left = self.clock(), 0.0
        for stage, n in self._stages().items():
            if not self.durations.get(stage):
                continue
            mean = sum(self.durations[stage]) / len(self.durations[stage])
            # A running job past the mean is counted as a tenth of one still to go, not as done.
            spent = sum(min(now - t, 0.9 * mean) for t, s in self.running.values() if s == stage)
            left += max(0.0, n * mean - spent)
        return left / max(1, self.slots)

    def line(self) -> str:
        """'[grid] 4/13 jobs done (1 failed), running: sdp s=0.50 (35 s), ~5m20s of training left'."""
        failed = f" ({self.failed} failed)" if self.failed else ""
        now = self.clock()
        running = ", ".join(f"{job} ({duration(now - t)})" for job, (t, _) in self.running.items())
        left, untimed = self.left_s(), self.untimed()
        if self.done >= self.total:
            eta = "training done"
        elif left is None or untimed.get("task"):
            eta = "estimating the time left"
        else:
            stages = untimed.get("distil", 0)
            eta = f"~{duration(left)} of training left" + (
                f", and {stages} task-agnostic stage{'s' if stages > 1 else ''} not yet timed" if stages else "")
        return (f"[grid] {self.done}/{self.total} jobs done{failed}"
                + (f", running: {running}" if running else "") + f", {eta}")
