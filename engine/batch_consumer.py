"""The hot path's consumer: confluent-kafka in one thread, micro-batches that adapt to the load.

Faust's stream machinery costs ~100 µs of Python per event (an ``Event`` object, a channel hop
and an ack per message), a ceiling of ~10,000 events/s however it is tuned; librdkafka fetches in
its own C threads and hands over thousands of messages per call. The Faust worker still owns this
consumer (:class:`agents.transactions` starts and stops it as a Faust service, with the app's
settings, web server and timers); only the per-message path bypasses Faust's streams.

Guarantees, per batch, in this order (one thread):

1. **wait** for the first message (``idle``), then take whatever else librdkafka has already
   fetched, up to ``batch_size`` (``consume``): one event when traffic is light (no waiting for a
   batch to fill), thousands under load;
2. **start** it (:meth:`engine.worker_runtime.Runtime.start_sync`: decode, send the feature
   update to Redis) and only then **finish** the batch before it (score, emit, ``sink.flush()``,
   Redis logs; retried until it succeeds, dead-lettered if it keeps failing on its data), so Redis
   applies one batch while Python scores the other. While a batch is in flight the next one is
   taken without waiting: at light load nothing waits for a second batch. Only a batch of at
   least ``overlap_from`` events (a backlog) stays in flight like this; a smaller one took all
   that had arrived and is finished at once, since holding it for the next batch would put a
   second batch's time on each of its decisions. A batch that could not start (``started``
   says so) is finished at once too: it is processed from its messages, and its events must
   reach the feature store before any later batch's do;
3. **commit** the next offsets of a batch's partitions once it is finished (asynchronously; a
   rebalance or stop finishes the batch in flight and commits synchronously first). Nothing is
   committed before the batch's outputs are flushed. A crash between 2 and 3 redelivers the
   batch: the feature store counts each ``event_id`` once, the decisions are re-emitted (at least
   once, byte for byte from the decision memo).

Rebalances run inside ``consume`` (librdkafka calls back on this thread), hence never in the
middle of a batch; revoked partitions get their batch in flight finished and their offsets
committed before they go. Batches are started, finished and committed in offset order, and the
feature updates reach Redis in that order too (one connection).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from engine import metrics
from engine.schemas import RawMessage

log = logging.getLogger(__name__)
T = TypeVar("T")


#: librdkafka fetch settings. Tansu (the embedded broker) answers a fetch that finds nothing new
#: only when ``fetch.wait.max.ms`` has passed, so the default 500 ms would put ~130 ms (p50) on
#: every decision at light load. Much lower is worse: at 5 ms, fetches of partitions that had grown
#: past ~30,000 records came back empty again and again (the broker's read of its in-memory log
#: seemed to take longer than the wait) and consumption stalled; at 25 and 50 ms it never did in
#: our runs. Against Apache Kafka (a true long poll) set ``RISKSTREAM_FETCH_MAX_WAIT_MS=500``.
#: (``queued.min.messages`` is left alone: lowered to 20,000 it made fetches 30 times slower.)
def fetch_config(max_wait_ms: int) -> dict[str, Any]:
    return {"fetch.wait.max.ms": max_wait_ms, "fetch.min.bytes": 1, "fetch.error.backoff.ms": 10}


def to_raw_messages(msgs: Sequence[Any]) -> list[RawMessage]:
    """confluent-kafka messages as :class:`RawMessage` (error events are logged and left out)."""
    out: list[RawMessage] = []
    append = out.append
    now = time.time()
    for m in msgs:
        error = m.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:  # noqa: SLF001 - librdkafka's name
                log.warning("consumer: %s", error)
            continue
        ts_type, ts = m.timestamp()
        append(RawMessage(m.value() or b"", m.topic(), m.partition(), m.offset(),
                          ts if ts_type and ts > 0 else None, now))  # fmt: skip
    return out


class BatchConsumer(Generic[T]):
    """Consume ``topic`` in a consumer group and hand adaptive batches to ``start``/``finish``.

    ``start(messages)`` begins a batch and must not raise on its data; ``finish(started)`` must
    return only once the batch's outputs are durable (it retries internally); an exception from
    either stops the consumer without committing the batch. ``started(begun)`` tells whether
    ``start`` got as far as sending the batch's feature update; a batch that did not is never
    held in flight while a later one starts.
    """

    def __init__(
        self,
        bootstrap: str,
        group_id: str,
        topic: str,
        start: Callable[[Sequence[RawMessage]], T],
        finish: Callable[[T], None],
        batch_size: int = 2000,
        poll_seconds: float = 0.1,
        fetch_max_wait_ms: int = 25,
        overlap_from: int = 0,
        started: Callable[[T], bool] = lambda _: True,
        **config: Any,
    ) -> None:
        self.topic = topic
        self.start = start
        self.finish = finish
        self.started = started
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        self.config = {
            "bootstrap.servers": bootstrap,
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "max.poll.interval.ms": 600_000,
            **fetch_config(fetch_max_wait_ms),
            **config,
        }
        self._stop = threading.Event()
        self._done: dict[int, int] = {}  # partition -> next offset to read (processed, flushed)
        self._committed: dict[int, int] = {}
        self._consumer: Consumer | None = None
        self._inflight: tuple[list[RawMessage], T] | None = None  # started, not finished
        #: Batches this big stay in flight while the next starts; smaller ones finish at once.
        self.overlap_from = overlap_from or max(batch_size // 2, 1)
        self.batches = 0
        self.events = 0

    def stop(self) -> None:
        """Ask the loop to finish its current batch, commit and leave the group."""
        self._stop.set()

    # -- rebalance callbacks (run inside consume/poll, i.e. between batches) -------------------

    def _on_assign(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        log.info("assigned %s", sorted(p.partition for p in parts))
        metrics.ASSIGNED_PARTITIONS.inc(len(parts))

    def _on_revoke(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        gone = {p.partition for p in parts}
        log.info("revoked %s", sorted(gone))
        metrics.ASSIGNED_PARTITIONS.dec(len(parts))
        self._finish_inflight(consumer, commit=False)
        self._commit(consumer, gone, asynchronous=False)
        for p in gone:
            self._done.pop(p, None)
            self._committed.pop(p, None)

    def _on_lost(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        # Another member may own them already: committing could move its offsets backwards.
        log.warning("lost %s without a clean revoke", sorted(p.partition for p in parts))
        metrics.ASSIGNED_PARTITIONS.dec(len(parts))
        self._finish_inflight(consumer, commit=False)  # its outputs go out (at least once)
        for p in parts:
            self._done.pop(p.partition, None)
            self._committed.pop(p.partition, None)

    def _commit(self, consumer: Consumer, partitions: set[int] | None, asynchronous: bool) -> None:
        todo = [
            TopicPartition(self.topic, p, off)
            for p, off in self._done.items()
            if (partitions is None or p in partitions) and self._committed.get(p) != off
        ]
        if not todo:
            return
        try:
            if asynchronous:
                consumer.commit(offsets=todo, asynchronous=True)
            else:
                consumer.commit(offsets=todo, asynchronous=False)
        except KafkaException as exc:  # at least once: a failed commit only means redelivery
            if exc.args[0].code() != KafkaError._NO_OFFSET:  # noqa: SLF001 - librdkafka's name
                log.warning("offset commit failed: %s", exc)
            return
        for tp in todo:
            self._committed[tp.partition] = tp.offset

    # -- the loop -----------------------------------------------------------------------------

    def _finish_inflight(self, consumer: Consumer, commit: bool = True) -> None:
        """Finish the batch in flight (if any), then mark its offsets done and commit them."""
        inflight, self._inflight = self._inflight, None
        if inflight is None:
            return
        msgs, started = inflight
        self.finish(started)
        t0 = time.perf_counter()
        for m in msgs:
            self._done[m.partition] = m.offset + 1
        if commit:
            self._commit(consumer, None, asynchronous=True)
        metrics.STAGE_SECONDS.labels("commit").observe(time.perf_counter() - t0)
        self.batches += 1
        self.events += len(msgs)

    def run(self) -> None:
        """Consume until :meth:`stop`; runs on its own thread."""
        consumer = Consumer(self.config)
        self._consumer = consumer
        consumer.subscribe(
            [self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )  # fmt: skip
        observe = metrics.STAGE_SECONDS.labels
        idle, take = observe("idle"), observe("consume")
        clean = False
        try:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                if self._inflight is None:  # nothing to do: wait for the first message
                    first = consumer.poll(self.poll_seconds)
                    t1 = time.perf_counter()
                    if first is None:
                        idle.observe(t1 - t0)
                        continue
                    more = consumer.consume(self.batch_size - 1, 0) if self.batch_size > 1 else []
                    got = [first, *more]
                else:  # a batch is in flight: take what has arrived, never wait
                    t1 = t0
                    got = consumer.consume(self.batch_size, 0)
                msgs = to_raw_messages(got)
                t2 = time.perf_counter()
                idle.observe(t1 - t0)
                take.observe(t2 - t1)
                started = None
                if msgs:
                    metrics.BATCH_EVENTS.observe(len(msgs))
                    started = (msgs, self.start(msgs))
                self._finish_inflight(consumer)  # (a rebalance in consume may have done it)
                self._inflight = started
                if started is not None and (
                    len(msgs) < self.overlap_from or not self.started(started[1])
                ):  # keeping up, or not started: not held while the next batch starts
                    self._finish_inflight(consumer)
            self._finish_inflight(consumer)
            clean = True
        finally:
            try:
                if not clean:  # a batch in flight is not finished: not committed, redelivered
                    self._inflight = None
                self._commit(consumer, None, asynchronous=False)
            finally:
                consumer.close()
                self._consumer = None
                metrics.ASSIGNED_PARTITIONS.set(0)
