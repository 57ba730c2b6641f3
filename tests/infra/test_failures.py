"""Which failed attempts a job restarts, read from Ray Train's errors as the driver gets them."""

from __future__ import annotations

from ray.exceptions import ActorDiedError
from ray.train import ControllerError
from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError
from ray.train.v2.api.exceptions import WorkerGroupError

from infra.train import failures
from infra.train.job import TrainingError
from infra.train.loop import NonFiniteLossError


def _group(*errors: Exception) -> WorkerGroupError:
    return WorkerGroupError("worker errors", dict(enumerate(errors)))


def test_a_dead_worker_is_restarted_and_a_failure_that_would_repeat_is_not() -> None:
    nan = NonFiniteLossError("job ab12: loss is nan at step 3 (method gmp); lower the learning rate")
    masks = TrainingError("job ab12: masks differ across ranks at step 10")
    small = TrainingError("job ab12: the train split has 5 examples, fewer than one batch of 16 x 1")
    assert failures.restartable(_group(ActorDiedError()))  # a node lost, the OOM killer
    assert failures.restartable(_group(RuntimeError("gloo: connection reset by peer")))
    assert not failures.restartable(_group(nan))
    assert not failures.restartable(_group(masks, masks))
    assert not failures.restartable(_group(small))
    # One rank's NaN, and the other rank's collective broken by it: still a NaN.
    assert not failures.restartable(_group(nan, RuntimeError("gloo: peer closed")))
    # Ray Train already gave the worker group its start-up retries.
    assert not failures.restartable(ControllerError(WorkerGroupStartupTimeoutError(2)))
