"""A worker SIGKILLed in the middle of a batch loses nothing and counts nothing twice.

A backlog of transactions (one partition, so the order is the file's) is consumed by a worker.
The worker is frozen (SIGSTOP) at moments until one is *mid-batch*: the feature store has applied
more events than the worker has flushed decisions for. It is then SIGKILLed there, a new worker
is started on the same group, and when it is done:

* every transaction has a decision (at least once: a batch flushed but not yet committed may be
  decided twice, never zero times);
* the feature vector logged for every transaction (the last scoring of it) equals the one an
  in-process run of the same file, never interrupted, computed (to 1e-9: sums differ in their
  last bits with the batch boundaries): the events the killed worker had already applied were
  not counted again when they were redelivered; and the redelivered events themselves are
  scored with the features they had the first time (the store gives a redelivery its first
  delivery's windows).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import numpy as np
import orjson
import pytest
import redis

from engine.build import build_service
from engine.service import FEATURE_LOG_PREFIX
from engine.settings import Settings
from engine.sinks import MemorySink, ensure_topics
from engine.worker_process import WorkerProcess, metric_value, wait_until
from replay.inprocess import encode, records_of
from replay.kafka_io import json_items, produce, producer, read_topic
from replay.simulate import simulate
from tests.e2e.support import db_url, topic_env

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]


def _applied(client: redis.Redis) -> int:
    """Transactions the feature store has applied (its per-day ``seen`` hashes)."""
    return sum(int(client.hlen(k)) for k in client.scan_iter(match="rs:seen:t:*", count=1000))


def _decided(bootstrap: str, topic: str) -> list[str]:
    values = read_topic(bootstrap, topic, lambda v: False, timeout=0.8)
    return [orjson.loads(v)["event_id"] for v in values]


def _feature_log(client: redis.Redis, ids: list[str]) -> list[bytes | None]:
    out: list[bytes | None] = []
    for a in range(0, len(ids), 2000):
        out.extend(client.mget([FEATURE_LOG_PREFIX + e for e in ids[a : a + 2000]]))
    return out


@dataclass
class CrashRun:
    ids: list[str]
    decided: Counter[str]
    #: Events the killed worker had applied to the features but not flushed decisions for.
    in_flight: list[str]
    #: Event ids whose logged feature vector differs from the uninterrupted run's.
    differ: list[str]


@pytest.fixture(scope="module")
def crash_run(stack: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> CrashRun:
    tmp_path = tmp_path_factory.mktemp("crash")
    df = simulate(days=5, seed=5, n_customers=1200, n_merchants=200)
    records = records_of(df)
    ids = [str(r["event_id"]) for r in records]
    n = len(records)
    assert n > 8000

    # The reference: the same records in-process, one run, never interrupted (database 6).
    ref_url = db_url(stack["RISKSTREAM_REDIS_URL"], 6)
    ref_client = redis.Redis.from_url(ref_url)
    ref_client.flushdb()
    ref = build_service(Settings(redis_url=ref_url, data_dir=tmp_path / "ref"),
                        sink=MemorySink(), use_registry=False)  # fmt: skip
    for a in range(0, n, 500):
        ref.process_transactions(encode(records[a : a + 500]))

    suffix = uuid.uuid4().hex[:8]
    topics = topic_env(suffix)
    url = db_url(stack["RISKSTREAM_REDIS_URL"], 5)
    client = redis.Redis.from_url(url)
    client.flushdb()
    env = {**stack, **topics, "RISKSTREAM_REDIS_URL": url, "RISKSTREAM_APP_ID": f"crash-{suffix}",
           "RISKSTREAM_DATA_DIR": str(tmp_path / "data"), "RISKSTREAM_TOPIC_PARTITIONS": "1",
           "RISKSTREAM_BATCH_SIZE": "200"}  # fmt: skip
    bootstrap = stack["RISKSTREAM_KAFKA_BOOTSTRAP"]
    scores = topics["RISKSTREAM_TOPIC_SCORES"]
    ensure_topics(bootstrap, list(topics.values()), 1)
    (tmp_path / "data").mkdir()
    prod = producer(bootstrap)

    first = WorkerProcess(env, tmp_path / "worker1.log").start()
    try:
        produce(prod, topics["RISKSTREAM_TOPIC_TRANSACTIONS"], json_items(records[:1], "card_id"))
        assert wait_until(
            lambda: metric_value(first.metrics(), "riskstream_decisions_total") >= 1, 180
        )
        # The rest at a pace the worker keeps up with in small batches, so it stays busy.
        feed = threading.Thread(target=produce, args=(
            prod, topics["RISKSTREAM_TOPIC_TRANSACTIONS"], json_items(records[1:], "card_id"),
            2000.0))  # fmt: skip
        feed.start()
        assert first.proc is not None
        pid = first.proc.pid
        rng = random.Random(13)
        mid_batch = None
        for _ in range(60):
            time.sleep(rng.uniform(0.02, 0.2))
            os.killpg(pid, signal.SIGSTOP)
            applied, flushed = _applied(client), len(set(_decided(bootstrap, scores)))
            if flushed < n and applied > flushed:
                mid_batch = (applied, flushed)
                break
            os.killpg(pid, signal.SIGCONT)
        assert mid_batch is not None, "never caught the worker between features and flush"
        os.killpg(pid, signal.SIGKILL)
        first.proc.wait(10)
        feed.join()
    finally:
        first.stop()

    applied, flushed = mid_batch
    assert 0 < flushed < applied < n  # killed with applied, unflushed events in its batch
    with WorkerProcess(env, tmp_path / "worker2.log"):
        values = read_topic(bootstrap, scores,
                            lambda v: len({orjson.loads(x)["event_id"] for x in v}) >= n,
                            timeout=300)  # fmt: skip
    decided = Counter(orjson.loads(v)["event_id"] for v in values)
    got, want = _feature_log(client, ids), _feature_log(ref_client, ids)
    assert all(v is not None for v in got) and all(v is not None for v in want)
    # Sums depend on the batch boundaries in their last bits (the store's summation order);
    # an event counted twice moves a count by 1 and a sum by an amount.
    differ = [
        e for e, a, b in zip(ids, got, want, strict=True)
        if not np.allclose(np.frombuffer(a, np.float64), np.frombuffer(b, np.float64),  # type: ignore[arg-type]
                           rtol=1e-9, atol=1e-9, equal_nan=True)
    ]  # fmt: skip
    # Redelivered: applied but not flushed when killed, or flushed but not yet committed (those
    # were decided twice).
    in_flight = [*ids[flushed:applied], *(e for e, k in decided.items() if k > 1)]
    return CrashRun(ids, decided, in_flight, differ)


def test_worker_killed_mid_batch_loses_nothing_and_counts_nothing_twice(
    crash_run: CrashRun,
) -> None:
    """Every transaction decided (the in-flight ones by the restarted worker), and no event the
    killed worker had applied was counted again: every later event's features are exact."""
    assert set(crash_run.decided) == set(crash_run.ids)
    assert crash_run.in_flight
    not_in_flight = sorted(set(crash_run.differ) - set(crash_run.in_flight))
    assert not not_in_flight, f"{len(not_in_flight)} differ, e.g. {not_in_flight[:5]}"


def test_redelivered_events_are_scored_with_the_features_they_had_the_first_time(
    crash_run: CrashRun,
) -> None:
    assert not crash_run.differ, f"{len(crash_run.differ)} redelivered events scored otherwise"
