"""``rebuild-features`` (replay/warmup.py) against a real Tansu and Valkey: a memory-only Redis lost
its state while a worker had sent decisions it had not committed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
import redis
from confluent_kafka import Consumer, Producer, TopicPartition

from engine.build import build_service
from engine.schemas import RawMessage
from engine.service import FEATURE_LOG_PREFIX
from engine.settings import Settings
from engine.sinks import KafkaSink
from features.reference import reference_features
from features.spec import DEFAULT_SPEC
from replay.inprocess import TRANSACTION_FIELDS
from replay.kafka_io import fresh_topic_env, read_topic
from replay.simulate import simulate
from replay.warmup import rebuild_from_topic

pytestmark = pytest.mark.integration

ENTITIES = ("card_id", "customer_id", "merchant_id", "device_id", "ip", "channel")


def _values(bootstrap: str, topic: str, n: int) -> list[bytes]:
    """The first ``n`` values of a one-partition topic (``read_topic`` reads to a count: Tansu's
    high watermark stops inside the last record batch)."""
    values = read_topic(bootstrap, topic, lambda v: len(v) >= n, 60)
    assert len(values) == n
    return values


def _commit(bootstrap: str, group: str, topic: str, offset: int) -> None:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    c.commit(offsets=[TopicPartition(topic, 0, offset)], asynchronous=False)
    c.close()


def test_decisions_sent_but_not_committed_are_repeated_byte_for_byte(
    kafka_bootstrap: str, redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    env = {**fresh_topic_env(kafka_bootstrap, "warmup"), "RISKSTREAM_REDIS_URL": redis_url,
           "RISKSTREAM_KAFKA_BOOTSTRAP": kafka_bootstrap,
           "RISKSTREAM_DATA_DIR": str(tmp_path)}  # fmt: skip
    settings = Settings.from_env(env)
    frame = simulate(days=1, seed=5, n_customers=60, n_merchants=10).iloc[:90]
    frame = frame.reset_index(drop=True)
    cols = [c for c in TRANSACTION_FIELDS if c in frame.columns]
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i, rec in enumerate(frame[cols].to_dict("records")):
        value = orjson.dumps(rec, option=orjson.OPT_SERIALIZE_NUMPY)
        producer.produce(settings.topic_transactions, value, str(rec["card_id"]).encode())
        if i == 44:  # a malformed message among the uncommitted ones: dead-lettered, no decision
            producer.produce(settings.topic_transactions, b"not json", b"x")
    producer.flush(30)
    topic = settings.topic_transactions
    msgs = [RawMessage(v, topic, 0, i) for i, v in enumerate(_values(kafka_bootstrap, topic, 91))]

    # a worker decides 0-59 and commits 0-29: Redis dies before it commits the second batch
    first = build_service(settings, sink=KafkaSink(kafka_bootstrap), client=redis_client)
    first.process_transactions(msgs[:30])
    first.process_transactions(msgs[30:61])
    _commit(kafka_bootstrap, settings.transactions_group_id, settings.topic_transactions, 30)
    redis_client.flushdb()  # the memory-only Redis restarted empty

    assert rebuild_from_topic(env) == 61  # the committed 30 and the 31 already handled

    # the restarted worker reads from the committed offset
    again = build_service(settings, sink=KafkaSink(kafka_bootstrap), client=redis_client)
    report = again.process_transactions(msgs[30:61])
    assert report.redelivered == 30
    again.process_transactions(msgs[61:])

    copies: dict[str, list[bytes]] = {}
    for value in _values(kafka_bootstrap, settings.topic_scores, 120):
        copies.setdefault(orjson.loads(value)["event_id"], []).append(value)
    ids = frame["event_id"].astype(str).tolist()
    assert set(copies) == set(ids)
    assert [len(copies[e]) for e in ids] == [1] * 30 + [2] * 30 + [1] * 30
    assert all(len(set(v)) == 1 for v in copies.values())  # every repeat is byte-identical

    # and every event was counted once: the logged features equal the offline reference
    logged = redis_client.mget([FEATURE_LOG_PREFIX + e for e in ids])
    assert all(v is not None for v in logged)
    width = len(DEFAULT_SPEC)
    got = np.vstack([np.frombuffer(v, dtype=np.float64)[:width] for v in logged])  # type: ignore[arg-type]
    want = reference_features(ids, frame["ts"].to_numpy(), frame["amount"].to_numpy(),
                              {f: frame[f].astype(str).tolist() for f in ENTITIES})  # fmt: skip
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
