"""Rebuild the feature store from the transactions topic after a memory-only Redis lost it.

The documented procedure (README, "Faults"): stop the workers (their offsets are committed), start
Redis again, run ``riskstream rebuild-features``, start the workers. The command reads every
partition of the transactions topic from the beginning up to the consumer group's committed
offsets and runs it through the live scoring service with a sink that sends nothing: the
velocity state, the decision memos, the logged feature vectors and the review cases are what they
would have been, and nothing is emitted twice. The workers then continue from their committed
offsets, so every event is counted once.

A worker can have sent decisions it never committed: Redis died after a batch's decisions left
and before its offsets were committed (the batch failed on Redis and was never finished). The
workers will read those transactions again, and with the memos gone they would decide them a
second time, with another ``scored_at``. So the rebuild also looks past the committed offsets: a
transaction whose decision is already on the scores topic is applied too, and its memo is the
decision as it was sent, byte for byte. The restarted worker then answers its redelivery from that
memo, as it would have if Redis had kept its state.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import orjson
from confluent_kafka import Consumer, TopicPartition

from engine.schemas import RawMessage
from engine.service import DECISION_MEMO_PREFIX
from engine.settings import Settings

#: How far before the first uncommitted transaction a decision is looked for (ms): a decision is
#: produced after its transaction but stamped by the worker's clock, which may lag the producer's.
CLOCK_SKEW_MS = 3_600_000
#: How many batches of transactions past the last one found decided the rebuild still looks at:
#: more than a worker has in flight (a batch being finished, the next one started), so that a
#: dead-lettered transaction among them does not hide the decided ones after it. It also ends the
#: scan while producers keep appending (the topic has no quiet end then).
LOOKAHEAD_BATCHES = 4


def _event_id(value: bytes | None) -> str | None:
    try:
        rec = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    eid = rec.get("event_id") if isinstance(rec, dict) else None
    return None if eid is None else str(eid)


def _partitions(reader: Consumer, topic: str) -> list[int]:
    meta = reader.list_topics(topic, timeout=10)
    return sorted(meta.topics[topic].partitions) if topic in meta.topics else []


def _read(
    reader: Consumer, topic: str, starts: dict[int, int], ends: dict[int, int] | None = None
) -> Iterator[RawMessage]:
    """The messages of ``topic`` from ``starts`` to ``ends`` (exclusive) of each partition, in
    order within one. Without ``ends``: to the end of the log, that is past the high watermark
    *and* until a poll comes back empty (Tansu 0.6 reports a watermark inside the last record
    batch, and answers every time lookup with offset 0: neither is trusted alone)."""
    high = {} if ends is not None else {
        p: reader.get_watermark_offsets(TopicPartition(topic, p), 10)[1] for p in starts
    }  # fmt: skip
    position = dict(starts)
    todo = {p for p in starts if ends is None or position[p] < ends[p]}
    if not todo:
        return
    reader.assign([TopicPartition(topic, p, position[p]) for p in todo])
    try:
        while todo:
            batch = reader.consume(1000, 1.0)
            if not batch and ends is None:
                todo = {p for p in todo if position[p] < high[p]}
            for m in batch:
                p, off = m.partition(), m.offset()
                if m.error() is not None or p not in todo or off is None or off < position[p]:
                    continue
                if ends is not None and off >= ends[p]:
                    continue
                position[p] = off + 1
                ts = m.timestamp()[1]
                yield RawMessage(m.value() or b"", topic, p, off, ts if ts > 0 else None)
            if ends is not None:
                todo = {p for p in todo if position[p] < ends[p]}
    finally:
        reader.unassign()


def _decided_tail(
    reader: Consumer, settings: Settings, committed: dict[int, int]
) -> tuple[dict[str, bytes], dict[int, int]]:
    """Transactions past the committed offsets whose decision is already on the scores topic:
    their decisions as sent, and how far each partition must be applied to include them."""
    topic = settings.topic_transactions
    firsts = []
    for p, start in committed.items():  # the first uncommitted transaction of each partition
        for m in _read(reader, topic, {p: start}):
            firsts.append(m.timestamp_ms or 0)
            break
    if not firsts:  # nothing past the commits
        return {}, dict(committed)
    since = max(min(firsts) - CLOCK_SKEW_MS, 0)
    scores = settings.topic_scores
    parts = _partitions(reader, scores)
    at = reader.offsets_for_times([TopicPartition(scores, p, since) for p in parts], 10)
    sent: dict[str, bytes] = {}  # the workers are stopped: the scores topic has an end
    for m in _read(reader, scores, {tp.partition: max(tp.offset, 0) for tp in at}):
        if (m.timestamp_ms or since) >= since and (eid := _event_id(m.value)) is not None:
            sent[eid] = m.value  # a repeated decision is byte-identical
    ends = dict(committed)
    decided: dict[str, bytes] = {}
    lookahead = LOOKAHEAD_BATCHES * settings.batch_size
    for p, start in committed.items():
        unseen = 0
        for m in _read(reader, topic, {p: start}):
            eid = _event_id(m.value)
            if eid is not None and eid in sent:
                decided[eid] = sent[eid]
                ends[p], unseen = m.offset + 1, 0
            else:
                unseen += 1
                if unseen >= lookahead:
                    break
    return decided, ends


def rebuild_from_topic(env: Mapping[str, str] | None = None, batch_size: int = 1000) -> int:
    """Apply the transactions the group has committed, and those past it whose decision was
    already sent, to the (empty) store; how many."""
    from engine.build import build_service
    from engine.sinks import NullSink

    settings = Settings.from_env(env or {})
    service = build_service(settings, sink=NullSink(), live=True)
    topic = settings.topic_transactions
    reader = Consumer({"bootstrap.servers": settings.kafka_bootstrap,
                       "group.id": settings.transactions_group_id,
                       "enable.auto.commit": False, "auto.offset.reset": "earliest"})  # fmt: skip
    done = 0
    try:
        parts = _partitions(reader, topic)
        committed = reader.committed([TopicPartition(topic, p) for p in parts], timeout=10)
        # no commit yet: the workers start from the beginning (auto.offset.reset=earliest)
        decided, ends = _decided_tail(reader, settings, {tp.partition: max(tp.offset, 0)
                                                         for tp in committed})  # fmt: skip
        batch: list[RawMessage] = []
        for m in _read(reader, topic, dict.fromkeys(ends, 0), ends):
            batch.append(m)
            if len(batch) >= batch_size:
                service.process_transactions(batch)
                done, batch = done + len(batch), []
        if batch:
            service.process_transactions(batch)
            done += len(batch)
        if decided:  # their memos as sent: the workers' redeliveries repeat them byte for byte
            with service.redis.pipeline(transaction=False) as pipe:
                for eid, value in decided.items():
                    pipe.set(DECISION_MEMO_PREFIX + eid, value, ex=settings.redelivery_memo_seconds)
                pipe.execute()
    finally:
        reader.close()
    return done
