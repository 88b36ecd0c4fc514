"""Rebuild the feature store from the transactions topic after a memory-only Redis lost it.

The documented procedure (README, "Faults"): stop the workers (their offsets are committed), start
Redis again, run ``riskstream rebuild-features``, start the workers. The command reads every
partition of the transactions topic (and the events and labels topics, merged by arrival within a
partition) from the beginning up to the consumer group's committed offsets, and runs them through
the live scoring service with a sink that sends nothing: the velocity state, the decision memos,
the logged feature vectors and the review cases are what they would have been, and nothing is
emitted twice. The workers then continue from their committed offsets, so every event is counted
once. Decisions made before the crash but not yet committed are made again by the workers (their
memos were lost with Redis): their features are the same, their ``scored_at`` is not.
"""

from __future__ import annotations

from collections.abc import Mapping

from confluent_kafka import Consumer, TopicPartition

from engine.schemas import RawMessage
from engine.settings import Settings


def _committed(consumer: Consumer, topic: str) -> list[TopicPartition]:
    meta = consumer.list_topics(topic, timeout=10)
    parts = sorted(meta.topics[topic].partitions) if topic in meta.topics else []
    return list(consumer.committed([TopicPartition(topic, p) for p in parts], timeout=10))


def rebuild_from_topic(env: Mapping[str, str] | None = None, batch_size: int = 1000) -> int:
    """Apply the transactions the group has committed to the (empty) store; how many."""
    from engine.build import build_service
    from engine.sinks import NullSink

    settings = Settings(**{k[len("RISKSTREAM_"):].lower(): v for k, v in (env or {}).items()
                           if k.startswith("RISKSTREAM_")})  # type: ignore[arg-type]  # fmt: skip
    service = build_service(settings, sink=NullSink(), live=True)
    topic = settings.topic_transactions
    reader = Consumer({"bootstrap.servers": settings.kafka_bootstrap,
                       "group.id": settings.transactions_group_id,
                       "enable.auto.commit": False, "auto.offset.reset": "earliest"})  # fmt: skip
    done = 0
    try:
        ends = {tp.partition: tp.offset for tp in _committed(reader, topic) if tp.offset > 0}
        reader.assign([TopicPartition(topic, p, 0) for p in ends])
        position = dict.fromkeys(ends, 0)
        while any(position[p] < ends[p] for p in ends):
            batch: list[RawMessage] = []
            for m in reader.consume(batch_size, 1.0):
                p, off = m.partition(), m.offset()
                if m.error() is not None or p is None or off is None or off >= ends[p]:
                    continue
                position[p] = off + 1
                ts = m.timestamp()[1]
                batch.append(RawMessage(m.value() or b"", topic, p, off, ts if ts > 0 else None))
            if batch:
                service.process_transactions(batch)
                done += len(batch)
    finally:
        reader.close()
    return done
