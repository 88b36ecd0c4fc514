"""Produce replayed records to Kafka (paced or as fast as possible) and read topics back.

Reading uses partition assignment, not a consumer group: no group join to wait for, and the
worker's group offsets are left alone.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition


def producer(bootstrap: str, linger_ms: float = 5) -> Producer:
    """A producer for replays; ``linger_ms=0`` sends each paced message at once (latency runs:
    the latency clock starts at the message's timestamp, taken when it is produced)."""
    return Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": linger_ms, "batch.num.messages": 10000}
    )


def produce(
    prod: Producer,
    topic: str,
    items: Iterable[tuple[bytes | None, bytes]],
    rate: float = 0.0,
) -> int:
    """Send (key, value) pairs; ``rate`` > 0 paces them to that many per second."""
    return produce_mixed(prod, ((topic, k, v) for k, v in items), rate)


def produce_mixed(
    prod: Producer, items: Iterable[tuple[str, bytes | None, bytes]], rate: float = 0.0
) -> int:
    """Send (topic, key, value) triples in order, e.g. transactions and labels by event time."""
    n = 0
    t0 = time.perf_counter()
    for topic, key, value in items:
        while True:
            try:
                prod.produce(topic, value, key)
                break
            except BufferError:
                prod.poll(0.05)
        n += 1
        if rate > 0 and n % 10 == 0:
            ahead = n / rate - (time.perf_counter() - t0)
            if ahead > 0:
                time.sleep(ahead)
        if n % 10000 == 0:
            prod.poll(0)
    remaining = prod.flush(60)
    if remaining:
        msg = f"{remaining} records not delivered"
        raise KafkaException(msg)
    return n


def json_items(
    records: Iterable[dict[str, Any]], key_field: str | None = None
) -> Iterable[tuple[bytes | None, bytes]]:
    dumps = orjson.dumps
    for r in records:
        key = str(r[key_field]).encode() if key_field and r.get(key_field) is not None else None
        yield key, dumps(r, option=orjson.OPT_SERIALIZE_NUMPY)


def read_topic(
    bootstrap: str,
    topic: str,
    until: Callable[[list[bytes]], bool],
    timeout: float,
    on_poll: Callable[[], None] | None = None,
) -> list[bytes]:
    """Read ``topic`` from the beginning until ``until(values)`` is true or ``timeout`` passes."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "riskstream-reader",
         "enable.auto.commit": False, "auto.offset.reset": "earliest"}
    )  # fmt: skip
    try:
        meta = consumer.list_topics(topic, timeout=10)
        parts = sorted(meta.topics[topic].partitions) if topic in meta.topics else [0]
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        values: list[bytes] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in consumer.consume(10000, 0.2):
                value = m.value()
                if m.error() is None and value is not None:
                    values.append(value)
            if on_poll is not None:
                on_poll()
            if until(values):
                break
        return values
    finally:
        consumer.close()


def fresh_topic_env(bootstrap: str, prefix: str, partitions: int = 1) -> dict[str, str]:
    """``RISKSTREAM_TOPIC_*`` settings naming new topics (created here) and a new consumer
    group: one run's traffic never meets another's on a shared broker."""
    from engine.sinks import ensure_topics

    suffix = uuid.uuid4().hex[:8]
    kinds = ("TRANSACTIONS", "EVENTS", "LABELS", "SCORES", "REVIEW", "DEAD_LETTER")
    env = {f"RISKSTREAM_TOPIC_{k}": f"{prefix}-{k.lower()}-{suffix}" for k in kinds}
    ensure_topics(bootstrap, list(env.values()), partitions)
    env["RISKSTREAM_APP_ID"] = f"{prefix}-{suffix}"
    env["RISKSTREAM_TOPIC_PARTITIONS"] = str(partitions)
    return env
