"""Which failures of a training job a restart can mend, and the words that report one.

A worker that died (a node lost, the OOM killer) is restarted from the job's last checkpoint, up
to `compute.max_failures` times (infra.train.ray_job.run_job). A failure that the job's own
numbers, data or code cause would only happen again: a NaN or infinite loss
(loop.NonFiniteLossError), a train split smaller than one batch, masks that differ across ranks
(job.TrainingError). It ends the job at its first attempt, and the grid's other jobs get the
machine. No Ray import here: the errors are read by their attributes.
"""

from __future__ import annotations

from infra.train.job import TrainingError
from infra.train.loop import NonFiniteLossError

# Raised by a worker for a reason a restart would meet again.
REPEATS: tuple[type[BaseException], ...] = (NonFiniteLossError, TrainingError)


def worker_errors(error: BaseException) -> list[BaseException]:
    """The workers' own exceptions inside a failed Ray Train run; none for a controller's error."""
    # ray: WorkerGroupError.worker_failures, rank -> the worker's own exception (a RayActorError
    # for a worker that died)
    return list((getattr(error, "worker_failures", None) or {}).values())


def restartable(error: BaseException) -> bool:
    """Whether a restart from the last checkpoint may mend `error`: workers failed, and none for a
    reason that would repeat."""
    errors = worker_errors(error)
    return bool(errors) and not any(isinstance(e, REPEATS) for e in errors)


def root_cause(error: BaseException) -> str:
    """The innermost error message, so a NaN loss reads as such and not as 'worker died'."""
    seen = error
    while seen.__cause__ is not None:
        seen = seen.__cause__
    text = str(seen).strip().splitlines()
    return text[-1] if text else type(seen).__name__
