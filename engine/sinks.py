"""Where decisions, review cases and dead letters go.

A sink buffers ``send`` calls and makes them durable on ``flush``; the worker flushes before it
acks the batch's offsets, so an output is never lost behind a committed offset.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]  # re-exported at runtime, not in stubs


class SinkError(RuntimeError):
    """Some records could not be delivered; the batch must not be acked."""


class MemorySink:
    """Keeps everything in lists, by topic (tests, in-process replay).

    >>> s = MemorySink(); s.send("scores", b"k", b"v"); s.flush(); s.values("scores")
    [b'v']
    """

    def __init__(self) -> None:
        self.records: dict[str, list[tuple[bytes | None, bytes]]] = defaultdict(list)

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        self.records[topic].append((key, value))

    def flush(self) -> None:
        return None

    def values(self, topic: str) -> list[bytes]:
        return [v for _, v in self.records[topic]]


class KafkaSink:
    """A confluent-kafka producer (C client: a few µs per record, batched by librdkafka)."""

    def __init__(self, bootstrap: str, **config: Any) -> None:
        conf = {
            "bootstrap.servers": bootstrap,
            # The worker flushes every batch: lingering would only add to each decision's latency.
            "linger.ms": 0,
            "enable.idempotence": False,
            "acks": "all",
            "message.timeout.ms": 30_000,
            # No Python callback per delivered record (~1 µs each); failures still call back.
            "delivery.report.only.error": True,
            **config,
        }
        self._producer = Producer(conf)
        self._errors: list[str] = []

    def _on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            self._errors.append(str(err))

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        while True:
            try:
                self._producer.produce(topic, value, key, on_delivery=self._on_delivery)
                return
            except BufferError:  # local queue full: let librdkafka drain, then retry
                self._producer.poll(0.05)

    def flush(self, timeout: float = 30.0) -> None:
        remaining = self._producer.flush(timeout)
        errors, self._errors = self._errors, []
        if remaining or errors:
            msg = f"{remaining} records undelivered, {len(errors)} failed: {errors[:3]}"
            raise SinkError(msg)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._producer.flush(10)


class BrokerUnavailableError(RuntimeError):
    """No Kafka broker answered at start-up (one line for the CLI, not librdkafka's retries)."""


def ensure_topics(bootstrap: str, names: list[str], partitions: int, timeout: float = 30) -> None:
    """Create the topics that do not exist yet (existing ones are left as they are).

    Waits up to ``timeout`` seconds for the broker, then raises :class:`BrokerUnavailableError`
    (librdkafka's own connection log is kept to errors it cannot retry: our message says it)."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 2})
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        msg = (f"no Kafka broker answered at {bootstrap} within {timeout:.0f} s "
               f"({exc.args[0].str()}); is it running? (RISKSTREAM_KAFKA_BOOTSTRAP)")  # fmt: skip
        raise BrokerUnavailableError(msg) from None
    wanted = [NewTopic(n, partitions, 1) for n in names if n not in existing]
    if not wanted:
        return
    for future in admin.create_topics(wanted, request_timeout=timeout).values():
        try:
            future.result(timeout)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


class NullSink:
    """Counts records and drops them (warm-up replays whose outputs nobody reads)."""

    def __init__(self) -> None:
        self.sent: dict[str, int] = defaultdict(int)

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        self.sent[topic] += 1

    def flush(self) -> None:
        return None
