"""What a worker process holds: settings, the Faust app, the scoring service, and the batch
runner that turns "the agent raised" into "retry, then dead-letter", never into a silent ack."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from engine import metrics
from engine.schemas import RawMessage
from engine.service import BatchReport, ScoringService
from engine.settings import Settings
from engine.sinks import SinkError

log = logging.getLogger(__name__)

#: Errors of the infrastructure: retried until they pass (the data is fine, a server is not).
TRANSIENT = (redis.ConnectionError, redis.TimeoutError, SinkError, ConnectionError, TimeoutError)


class BatchAbandonedError(RuntimeError):
    """The worker stopped while a batch was still failing: it is not committed (redelivered)."""


def to_raw(event: Any) -> RawMessage:
    """A Faust event as a :class:`RawMessage` (value bytes + topic/partition/offset/timestamp)."""
    m = event.message
    value = m.value if isinstance(m.value, bytes) else bytes(m.value or b"")
    ts = int(m.timestamp * 1000) if m.timestamp else None
    return RawMessage(value, m.topic, m.partition, m.offset, ts)


@dataclass
class Started:
    """A batch begun by :meth:`Runtime.start_sync`; ``handle`` is None if it could not start."""

    msgs: Sequence[RawMessage]
    handle: Any


@dataclass
class Runtime:
    settings: Settings
    app: Any
    service: ScoringService
    max_attempts: int = 5
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Set when the worker stops: a batch still failing is then abandoned (not committed).
    stopping: threading.Event = field(default_factory=threading.Event)

    def locked(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call ``fn`` holding the worker's lock: one batch at a time (River is not thread-safe)."""
        with self.lock:
            return fn(*args)

    def _failed(
        self, exc: Exception, n: int, topic: str, attempt: int, max_attempts: int
    ) -> str | None:
        """Log a failed attempt; the dead-letter detail once retries are exhausted, else None."""
        if isinstance(exc, TRANSIENT):
            log.warning("batch of %d from %s: %s; retrying", n, topic, exc)
            return None
        log.exception("batch of %d from %s failed (attempt %d)", n, topic, attempt)
        if attempt >= max_attempts:
            return f"{type(exc).__name__}: {exc}"[:500]
        return None

    @staticmethod
    def _backoff(attempt: int) -> float:
        return min(10.0, 0.25 * 2.0 ** min(attempt, 6))

    async def run_batch(
        self, fn: Callable[[Sequence[RawMessage]], BatchReport], events: Sequence[Any], topic: str
    ) -> None:
        """Process a Faust agent's batch until it succeeds; only then may Faust ack it.

        The same policy as the batch consumer's (:meth:`process_sync`, in a thread); when the
        worker stops while the batch is still failing, the agent is cancelled: nothing is acked.
        """
        msgs = [to_raw(e) for e in events]
        try:
            await asyncio.to_thread(self.process_sync, fn, msgs, topic, self.stopping)
        except BatchAbandonedError:
            raise asyncio.CancelledError from None

    def process_sync(
        self,
        fn: Callable[[Sequence[RawMessage]], BatchReport],
        msgs: Sequence[RawMessage],
        topic: str,
        stopping: threading.Event | None = None,
        max_attempts: int | None = None,
    ) -> None:
        """Process a batch until it succeeds (the one retry policy of every consumer).

        Transient errors (Redis or Kafka unreachable) are retried forever with backoff. Any
        other error is retried ``max_attempts`` times, then the batch is split in halves, each
        processed (and split again) on its own, so that only the message that fails alone goes
        to the dead-letter topic with reason ``processing_error``; its batch-mates are decided.

        Raises :class:`BatchAbandonedError` when ``stopping`` is set while retrying: the worker
        is going down, the batch is not committed and will be redelivered.
        """
        most = self.max_attempts if max_attempts is None else max_attempts
        attempt = 0
        while True:
            attempt += 1
            try:
                self.locked(fn, msgs)
                return
            except Exception as exc:
                detail = self._failed(exc, len(msgs), topic, attempt, most)
                if detail is not None:
                    if len(msgs) > 1:  # isolate the poison: halves, in order, 2 attempts each
                        mid = len(msgs) // 2
                        self.process_sync(fn, msgs[:mid], topic, stopping, 2)
                        self.process_sync(fn, msgs[mid:], topic, stopping, 2)
                        return
                    self._dead_letter_sync(msgs, detail, stopping)
                    return
            metrics.BATCH_RETRIES.labels(topic).inc()
            if (stopping or threading.Event()).wait(self._backoff(attempt)):
                raise BatchAbandonedError(topic)

    def start_sync(
        self, start: Callable[[Sequence[RawMessage]], Any], msgs: Sequence[RawMessage], topic: str
    ) -> Started:
        """Begin a batch with ``start`` (decode, send its feature update); a failure only means
        :meth:`finish_sync` processes it from its messages instead."""
        try:
            return Started(msgs, self.locked(start, msgs))
        except Exception as exc:
            log.warning("batch of %d from %s could not start (%s); processed later", len(msgs),
                        topic, exc)  # fmt: skip
            return Started(msgs, None)

    def finish_sync(
        self,
        finish: Callable[[Any], BatchReport],
        process: Callable[[Sequence[RawMessage]], BatchReport],
        started: Started,
        topic: str,
        stopping: threading.Event | None = None,
    ) -> None:
        """Complete a started batch with ``finish``; if it fails (or never started), process it
        again from its messages under :meth:`process_sync`'s retries and dead letters. Returns
        once its outputs are durable."""
        if started.handle is not None:
            try:
                self.locked(finish, started.handle)
                return
            except Exception as exc:
                log.warning("batch of %d from %s failed (%s); processing it again",
                            len(started.msgs), topic, exc)  # fmt: skip
                metrics.BATCH_RETRIES.labels(topic).inc()
        self.process_sync(process, started.msgs, topic, stopping)

    def _dead_letter_sync(
        self, msgs: Sequence[RawMessage], detail: str, stopping: threading.Event | None
    ) -> None:
        while True:
            try:
                self.service.dead_letter_all(msgs, detail)
                return
            except Exception:
                log.exception("could not write %d messages to dead-letter; retrying", len(msgs))
            if (stopping or threading.Event()).wait(2.0):
                raise BatchAbandonedError(msgs[0].topic if msgs else "?")
