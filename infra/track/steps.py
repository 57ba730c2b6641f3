"""A training job's step metrics, sent to MLflow so that a tracking server's blink loses nothing.

`log` only queues the points (stamped with their own time, so a resend is the same point and
MLflow's SQL store keeps it once); a thread sends them in batches and, while the server is
away (restarting, answering 5xx, refusing connections), keeps them and tries again with
backoff. `close` waits a bounded time for the queue to drain: a job fails only if the server
is still gone at its end, with an error that names it. A request MLflow refuses for good
(a bad value, a deleted run, no permission) is not retried: the next `log` raises it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from infra.track.tracking import TrackingError, client

BATCH = 1000  # MLflow's log_batch takes at most 1000 metrics
MAX_POINTS = 100_000  # the queue's bound (a point is ~200 bytes): hours of a server outage
FLUSH_WAIT_S = 180.0  # how long the job's end (or a full queue) waits for the server
BACKOFF_S = (0.5, 8.0)  # first and longest pause between tries while the server is away

_log = logging.getLogger(__name__)


def permanent(error: Exception) -> bool:
    """Whether MLflow refused the request itself (4xx other than 408/429): no retry helps."""
    if not isinstance(error, MlflowException):
        return False  # a connection error, a timeout: the server may come back
    status = error.get_http_status_code()
    return 400 <= status < 500 and status not in (408, 429)


class StepLogger:
    """Training-curve logging from a worker (rank 0) into an existing run; a no-op without one."""

    def __init__(self, uri: str | None, run_id: str | None, *, max_points: int = MAX_POINTS,
                 flush_wait_s: float = FLUSH_WAIT_S) -> None:
        self._uri, self._run_id = uri, run_id
        self._max, self._wait = max_points, flush_wait_s
        self._queue: deque[Metric] = deque()
        self._inflight: tuple[Metric, ...] = ()  # taken by the sender, not yet acknowledged
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._failure: str | None = None  # a refusal for good; raised by the next log/close
        self._last_error = ""  # why the server did not take the last try (for the final error)
        self._thread: threading.Thread | None = None

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not (self._uri and self._run_id):
            return
        now = int(time.time() * 1000)
        self._put([Metric(key, float(value), now, step) for key, value in sorted(metrics.items())])

    def requeue(self, points: list[dict]) -> None:
        """Points an earlier attempt of the job had not sent (its `pending()`), queued again."""
        if self._uri and self._run_id and points:
            self._put([Metric(**point) for point in points])

    def pending(self) -> list[dict]:
        """Points the server has not acknowledged yet (in flight included), oldest first."""
        with self._changed:
            return [{"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step}
                    for m in (*self._inflight, *self._queue)]

    def close(self) -> None:
        """Wait (at most `flush_wait_s`) until the server has every point; else raise, naming it."""
        with self._changed:
            try:
                self._drain(lambda: not self._queue and not self._inflight, "at the job's end")
            finally:
                self._stop.set()
                self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # ---- inside -------------------------------------------------------------------------

    def _put(self, points: list[Metric]) -> None:
        with self._changed:
            self._drain(lambda: len(self._queue) + len(points) <= self._max, "its queue was full")
            self._queue.extend(points)
            self._changed.notify_all()
        if self._thread is None:
            self._thread = threading.Thread(target=self._send_loop, name="mlflow-step-metrics",
                                            daemon=True)
            self._thread.start()

    def _drain(self, done, when: str) -> None:
        """Wait (the condition held) until `done()`; raise naming the server if it never comes."""
        deadline = time.monotonic() + self._wait
        while not self._failure and not done():
            if (left := deadline - time.monotonic()) <= 0:
                unsent = len(self._queue) + len(self._inflight)
                raise TrackingError(
                    f"MLflow server {self._uri} did not take {unsent} step metric point(s) of run "
                    f"{self._run_id} within {self._wait:.0f} s {when} (last error: "
                    f"{self._last_error or 'none'}); check that the server is up (`make up`, or "
                    "MLFLOW_TRACKING_URI) and run the experiment again")
            self._changed.wait(timeout=min(left, 1.0))
        if self._failure:
            raise TrackingError(self._failure)

    def _send_loop(self) -> None:
        pause = BACKOFF_S[0]
        while not self._stop.is_set():
            with self._changed:
                while not self._queue and not self._stop.is_set():
                    self._changed.wait()
                if not self._queue:
                    return
                batch = tuple(self._queue.popleft() for _ in range(min(BATCH, len(self._queue))))
                self._inflight = batch
            error = self._send(batch)
            with self._changed:
                self._inflight = ()
                if error is not None and permanent(error):
                    self._failure = (f"MLflow server {self._uri} refused the step metrics of run "
                                     f"{self._run_id}: {error}")
                elif error is not None:  # back to the front, in order, for the next try
                    self._queue.extendleft(reversed(batch))
                    self._last_error = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
                self._changed.notify_all()
            if self._failure:
                return
            if error is None:
                if pause > BACKOFF_S[0]:
                    _log.warning("MLflow server %s is back; sending the queued step metrics", self._uri)
                pause = BACKOFF_S[0]
            else:  # the server is away: wait before the next try (a closed logger stops at once)
                if pause == BACKOFF_S[0]:
                    _log.warning("MLflow server %s did not take step metrics (%s); they wait in a "
                                 "queue and are sent again", self._uri, self._last_error)
                self._stop.wait(pause)
                pause = min(pause * 2, BACKOFF_S[1])

    def _send(self, batch: tuple[Metric, ...]) -> Exception | None:
        try:
            client(self._uri).log_batch(self._run_id, metrics=list(batch))
        except Exception as error:  # noqa: BLE001 - sorted by the caller: retried or reported
            return error
        return None
