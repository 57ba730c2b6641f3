"""A training job's step metrics (infra.track.steps) survive a tracking server that blinks.

The real `mlflow server` of the local stack, stopped and started again on the same port and
store while several loggers keep logging at once; the points are counted on the server.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from infra.stack.local_stack import LocalStack, ServiceInfo
from infra.stack.processes import free_port
from infra.track import tracking
from infra.track.steps import StepLogger
from infra.track.tracking import TrackingError, client

STEPS = 60  # per logger, half before the server stops and half while it is down
LOGGERS = 3  # jobs logging at once


def _log(logger: StepLogger, steps: range, errors: list[BaseException]) -> None:
    try:
        for step in steps:
            logger.log(step, {"train_loss": 1.0 / step, "lr": 1e-3})
            time.sleep(0.005)  # a training step between two logs
    except BaseException as error:  # noqa: BLE001 - reported by the test
        errors.append(error)


def _all_at_once(loggers: list[StepLogger], steps: range) -> None:
    """Each logger in its own thread, as jobs on one cluster log at once."""
    errors: list[BaseException] = []
    threads = [threading.Thread(target=_log, args=(logger, steps, errors)) for logger in loggers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


@pytest.mark.integration
def test_a_server_restart_mid_job_loses_no_step_metric_of_jobs_logging_at_once(
        local_stack: LocalStack, mlflow_server: ServiceInfo) -> None:
    """The session's server, restarted in place (same port, same store): the tests after this
    one use it as before, and this one costs a restart, not two starts.

    One more job's worker dies during the outage: what its checkpoint carried (`pending()`,
    as ray_job writes it) is queued again by the restarted attempt, which goes on from there.
    """
    uri, half = mlflow_server.url, STEPS // 2
    experiment = tracking.ensure_experiment(uri, f"blink-{uuid.uuid4().hex[:8]}")
    runs = [tracking.start_run(uri, experiment, f"job-{i}") for i in range(LOGGERS + 1)]
    loggers = [StepLogger(uri, run) for run in runs[:-1]]
    dying = StepLogger(uri, runs[-1], flush_wait_s=0.1)
    _all_at_once([*loggers, dying], range(1, half + 1))
    try:
        local_stack.down(["mlflow"])  # a restart: the server is gone ...
        started = time.monotonic()
        _all_at_once([*loggers, dying], range(half + 1, STEPS + 1 - half // 2))
        assert time.monotonic() - started < 10  # logging did not wait for the server
        assert all(logger.pending() for logger in loggers)  # ... so the points wait in the queue
        checkpoint = dying.pending()  # its worker's last checkpoint, then the worker dies
        with pytest.raises(TrackingError):
            dying.close()  # and with it its sender: these points go no further from here
        restarted = StepLogger(uri, runs[-1])
        restarted.requeue(checkpoint)
        _all_at_once([*loggers, restarted], range(STEPS + 1 - half // 2, STEPS + 1))
    finally:
        assert local_stack.up(["mlflow"])["mlflow"].url == uri  # ... and back
    for logger in [*loggers, restarted]:
        logger.close()
    for run in runs:
        for key in ("train_loss", "lr"):
            history = client(uri).get_metric_history(run, key)
            assert sorted(m.step for m in history) == list(range(1, STEPS + 1)), (run, key)


def test_a_server_gone_at_the_job_end_fails_after_a_bounded_wait_naming_it() -> None:
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    logger = StepLogger(uri, "0" * 32, flush_wait_s=2)
    started = time.monotonic()
    for step in range(1, 4):
        logger.log(step, {"train_loss": 0.5})
    assert time.monotonic() - started < 1  # training goes on while the server is away
    assert [p["step"] for p in logger.pending()] == [1, 2, 3]
    with pytest.raises(TrackingError, match=rf"MLflow server {uri} did not take 3 step metric "
                                            r"point\(s\).* within 2 s.*make up"):
        logger.close()
    assert time.monotonic() - started < 30


def test_without_a_run_the_logger_does_nothing() -> None:
    logger = StepLogger(None, None)
    logger.log(1, {"train_loss": 0.5})
    assert logger.pending() == []
    logger.close()
