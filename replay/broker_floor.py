"""The broker's own latency floor at a paced rate, round after round on one growing topic.

A worker's decision latency cannot be lower than the time a message takes from its producer
to a consumer that does nothing. This measures that time (the Kafka timestamp to the moment a
bare confluent-kafka consumer, with the worker's fetch settings, gets the message) and the cores
the broker takes meanwhile. Each round adds ``rate * seconds`` keyed messages to the same topic,
spread over its partitions as the worker's transactions are (the worker's partition count by
default), so the rounds show whether the floor depends on how much the topic holds and on how
many partitions share it: with the embedded Tansu 0.6 (memory storage) it depends on both,
since its fetch lists every stored record batch of each partition it reads and a paced producer
stores one batch per partition per linger; a real Kafka finds an offset through its index.

The producer runs in a child process (its pacing and the consumer's loop would share one GIL).
"""

from __future__ import annotations

import multiprocessing
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from confluent_kafka import Consumer, TopicPartition

from engine.batch_consumer import fetch_config
from engine.sinks import ensure_topics
from replay.kafka_io import produce, producer
from replay.proc import cpu_seconds

#: A message about the size of a simulated transaction's JSON.
_VALUE = b'{"pad":"' + b"x" * 240 + b'"}'


@dataclass(frozen=True)
class FloorRound:
    """One paced round: what the topic held before it, and what a bare consumer saw."""

    round: int
    partitions: int
    messages_before: int
    events: int
    p50_ms: float
    p99_ms: float
    p999_ms: float
    broker_cores: float


def _pace(bootstrap: str, topic: str, rate: float, n: int, linger_ms: float, tag: bytes) -> None:
    """The child process: ``n`` messages keyed by the round's ``tag``, paced to ``rate``/s."""
    items = ((tag + str(i % 1000).encode(), _VALUE) for i in range(n))
    produce(producer(bootstrap, linger_ms=linger_ms), topic, items, rate)


def _round(
    bootstrap: str, topic: str, number: int, before: int, rate: float, seconds: float,
    linger_ms: float, fetch_wait_ms: int, partitions: int,
) -> FloorRound:  # fmt: skip
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"floor-{uuid.uuid4().hex}",
        "enable.auto.commit": False, **fetch_config(fetch_wait_ms),
    })  # fmt: skip
    # Tansu may report a high watermark inside the last record batch: a round starts a little
    # early and keeps only its own messages (keyed by the round)
    consumer.assign([
        TopicPartition(topic, p, consumer.get_watermark_offsets(TopicPartition(topic, p), 10)[1])
        for p in range(partitions)
    ])  # fmt: skip
    n, tag = int(rate * seconds), f"{number}-".encode()
    cpu0, t0 = cpu_seconds(cmdline_contains=bootstrap), time.monotonic()
    child = multiprocessing.get_context("spawn").Process(
        target=_pace, args=(bootstrap, topic, rate, n, linger_ms, tag)
    )
    child.start()
    ages: list[float] = []
    deadline = t0 + seconds + 60
    try:
        while len(ages) < n and time.monotonic() < deadline:
            first = consumer.poll(0.1)  # as the worker: wait for one, take what has arrived
            if first is None:
                continue
            now = time.time() * 1000
            for m in [first, *consumer.consume(999, 0)]:
                if m.error() is None and (m.key() or b"").startswith(tag):
                    ages.append(now - m.timestamp()[1])
    finally:
        child.join(60)
        consumer.close()
    cores = (cpu_seconds(cmdline_contains=bootstrap) - cpu0) / (time.monotonic() - t0)
    got = np.asarray(ages) if ages else np.zeros(1)
    p50, p99, p999 = (float(np.percentile(got, q)) for q in (50, 99, 99.9))
    return FloorRound(number, partitions, before, len(ages), p50, p99, p999, cores)


def broker_floor(
    bootstrap: str, topic: str, rate: float = 5000, seconds: float = 12, rounds: int = 5,
    linger_ms: float = 5, fetch_wait_ms: int = 25, partitions: int = 1,
) -> list[dict[str, Any]]:  # fmt: skip
    """Paced rounds of ``rate`` messages/s for ``seconds`` each to ``topic`` (created with
    ``partitions`` partitions if missing), each read by a new bare consumer of every partition
    from where the round starts."""
    ensure_topics(bootstrap, [topic], partitions=partitions)
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": f"floor-{uuid.uuid4().hex}"})
    held = sum(probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
               for p in range(partitions))  # fmt: skip
    probe.close()
    per_round = int(rate * seconds)
    out = []
    for i in range(1, rounds + 1):
        before = held + (i - 1) * per_round
        out.append(_round(bootstrap, topic, i, before, rate, seconds, linger_ms, fetch_wait_ms,
                          partitions))  # fmt: skip
    return [asdict(r) for r in out]
