"""Redelivery through Kafka, black-box: real worker processes, real Tansu and Valkey.

Kafka delivers at least once. Here the redeliveries are real ones: the workers are restarted from
an older offset (the beginning of the topic: the restarted group has no committed offsets), so
they read hundreds of transactions a second time, as after a crash between processing and
commit, and the producer also sends copies of some transactions (adjacent and 300 rows later).
The checks, event by event:

* every transaction has a decision on ``scores``; all decisions of one ``event_id`` are the same
  record, byte for byte (the redelivery is answered from the decision memo);
* the feature vector logged for every transaction (``rs:fv:``) equals the offline reference over
  the copy-free stream (rtol 1e-9): no feature counted a redelivered event twice;
* copies that land in the same micro-batch are dead letters ``duplicate_event_id``;
* the workers counted redeliveries (``riskstream_events_total{outcome="redelivered"}``).

With two workers the group is rebalanced by the restart, so a partition's redelivered events may
be answered by the worker that did not score them first: the memo is in Redis, shared.
One partition per worker keeps per-card order; the checked features are those of the card (the
partition key), which do not depend on how two partitions interleave.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest
import redis
from confluent_kafka import Consumer, TopicPartition

from engine.settings import Settings
from engine.sinks import ensure_topics
from engine.worker_process import WorkerProcess, metric_value, wait_until
from features.reference import reference_features
from features.spec import DEFAULT_SPEC
from replay.inprocess import TRANSACTION_FIELDS
from replay.kafka_io import produce, producer, read_topic
from replay.simulate import simulate
from tests.unit.test_features_kernels import assert_features_equal

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

FIELDS = ("card_id", "customer_id", "merchant_id", "device_id", "ip", "channel")
FEATURES = [f.name for f in DEFAULT_SPEC]


def _setup(stack: dict[str, str], tmp_path: Path, partitions: int, db: int) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8]
    topics = {
        "RISKSTREAM_TOPIC_TRANSACTIONS": f"tx-{suffix}", "RISKSTREAM_TOPIC_EVENTS": f"ev-{suffix}",
        "RISKSTREAM_TOPIC_LABELS": f"lb-{suffix}", "RISKSTREAM_TOPIC_SCORES": f"sc-{suffix}",
        "RISKSTREAM_TOPIC_REVIEW": f"rq-{suffix}", "RISKSTREAM_TOPIC_DEAD_LETTER": f"dl-{suffix}",
    }  # fmt: skip
    base, _, _ = stack["RISKSTREAM_REDIS_URL"].rpartition("/")
    url = f"{base}/{db}"
    redis.Redis.from_url(url).flushdb()
    ensure_topics(stack["RISKSTREAM_KAFKA_BOOTSTRAP"], list(topics.values()), partitions)
    return {
        **stack, **topics, "RISKSTREAM_REDIS_URL": url, "RISKSTREAM_APP_ID": f"redeliver-{suffix}",
        "RISKSTREAM_DATA_DIR": str(tmp_path / "data"),
        "RISKSTREAM_TOPIC_PARTITIONS": str(partitions), "RISKSTREAM_BATCH_SIZE": "50",
    }  # fmt: skip


def _items(frame: pd.DataFrame) -> list[tuple[bytes | None, bytes]]:
    cols = [c for c in TRANSACTION_FIELDS if c in frame.columns]
    return [
        (str(r["card_id"]).encode(), orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY))
        for r in frame[cols].to_dict("records")
    ]


def _with_copies(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Copies of 10 % of the rows: half right after their original, half 300 rows later."""
    rng = np.random.default_rng(seed)
    order: list[int] = []
    later: dict[int, list[int]] = {}
    for i in range(len(frame)):
        order.append(i)
        order.extend(later.pop(i, []))
        if rng.random() < 0.05:
            order.append(i)
        elif rng.random() < 0.05:
            later.setdefault(min(i + 300, len(frame) - 1), []).append(i)
    return frame.iloc[order].reset_index(drop=True)


def _scoring_group(env: dict[str, str]) -> str:
    """The consumer group that commits the transactions topic's offsets."""
    settings = Settings(app_id=env["RISKSTREAM_APP_ID"])
    return settings.scoring_group_id if settings.consumer == "batch" else settings.app_id


def _committed_all(bootstrap: str, group: str, topic: str, partitions: int, n: int) -> bool:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        parts = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], 10)
        return sum(max(p.offset, 0) for p in parts) >= n
    finally:
        consumer.close()


def _run(stack: dict[str, str], tmp_path: Path, workers: int, db: int) -> None:
    world = simulate(days=1, seed=11 + workers, n_customers=600, n_merchants=40)
    env = _setup(stack, tmp_path, partitions=workers, db=db)
    bootstrap = stack["RISKSTREAM_KAFKA_BOOTSTRAP"]
    tx, scores_topic = env["RISKSTREAM_TOPIC_TRANSACTIONS"], env["RISKSTREAM_TOPIC_SCORES"]
    group = _scoring_group(env)
    sent = _with_copies(world, seed=workers)
    half = len(sent) // 2
    first, second = _items(sent.iloc[:half]), _items(sent.iloc[half:])
    n_ids = world["event_id"].nunique()
    redelivered = 0.0

    # phase 1: the first half, then the workers stop with their offsets committed
    produce(producer(bootstrap), tx, first)
    procs = [WorkerProcess(env, tmp_path / f"w{w}-1.log").start() for w in range(workers)]
    try:
        ids1 = set(sent.iloc[:half]["event_id"])
        read_topic(bootstrap, scores_topic, lambda v: len({orjson.loads(x)["event_id"]
                   for x in v}) >= len(ids1), timeout=300)  # fmt: skip
        assert wait_until(lambda: _committed_all(bootstrap, group, tx, workers, half), 60)
    finally:
        for p in procs:
            p.stop()
    # redelivery: the restarted workers start from offset 0 (a new consumer group: Tansu takes
    # offset commits from group members only, and Faust's group admits Faust members only)
    again = len(set(sent.iloc[:half]["event_id"]))
    env = {**env, "RISKSTREAM_APP_ID": env["RISKSTREAM_APP_ID"] + "-restarted"}
    group = _scoring_group(env)

    produce(producer(bootstrap), tx, second)
    procs = [WorkerProcess(env, tmp_path / f"w{w}-2.log").start() for w in range(workers)]
    try:
        values = read_topic(bootstrap, scores_topic, lambda v: len({orjson.loads(x)["event_id"]
                            for x in v}) >= n_ids, timeout=300)  # fmt: skip
        # the restarted workers also answered every redelivered event
        tx_count = len(first) + len(second)
        assert wait_until(lambda: _committed_all(bootstrap, group, tx, workers, tx_count), 60)
        for p in procs:
            redelivered += metric_value(
                p.metrics(), "riskstream_events_total", {"topic": tx, "outcome": "redelivered"}
            )
            assert p.alive()
    finally:
        for p in procs:
            p.stop()
    assert redelivered >= again * 0.8  # nearly all re-read events were cross-batch copies

    values = read_topic(bootstrap, scores_topic, lambda v: False, timeout=3)
    by_id: dict[str, set[bytes]] = {}
    for v in values:
        by_id.setdefault(orjson.loads(v)["event_id"], set()).add(v)
    assert set(by_id) == set(world["event_id"])
    differing = {e: vs for e, vs in by_id.items() if len(vs) > 1}
    assert not differing, list(differing.items())[:2]
    assert len(values) > n_ids  # redelivered events were answered, not skipped
    dead = read_topic(bootstrap, env["RISKSTREAM_TOPIC_DEAD_LETTER"], lambda v: False, timeout=3)
    assert dead and {orjson.loads(d)["reason"] for d in dead} == {"duplicate_event_id"}

    # every feature of every event, as logged at its first decision, against the reference
    client = redis.Redis.from_url(env["RISKSTREAM_REDIS_URL"])
    logged = client.mget([f"rs:fv:{e}" for e in world["event_id"]])
    assert all(v is not None for v in logged)
    got = np.vstack([np.frombuffer(v, dtype=np.float64)[: len(FEATURES)] for v in logged])
    ents = {f: world[f].astype(str).tolist() for f in FIELDS}
    want = reference_features(
        world["event_id"].tolist(), world["ts"].to_numpy(), world["amount"].to_numpy(), ents
    )
    checked = list(range(len(FEATURES)))
    if workers > 1:  # only the partition key's features are independent of the interleaving
        checked = [i for i, f in enumerate(DEFAULT_SPEC) if f.entity == "card_id"]
    names = [FEATURES[i] for i in checked]
    assert_features_equal(got[:, checked], want[:, checked], names)


def test_one_worker_restarted_from_an_older_offset(stack: dict[str, str], tmp_path: Path) -> None:
    _run(stack, tmp_path, workers=1, db=7)


def test_two_workers_restarted_from_older_offsets(stack: dict[str, str], tmp_path: Path) -> None:
    _run(stack, tmp_path, workers=2, db=8)
