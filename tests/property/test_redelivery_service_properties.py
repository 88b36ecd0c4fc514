"""Redelivery at the level where the original bug lived: the scoring service's outputs.

The store-level properties (``test_redelivery_properties``) hold, yet a redelivered transaction
used to get a second, recomputed decision. Here hypothesis drives the live
:class:`~engine.service.ScoringService` (real Valkey, the real pipeline and rules) with streams
that repeat transactions (same batch, later batches) and with batches that fail after the
feature update, before or after the decision memo was written but before anything was flushed
(a crash, retried as the worker retries), and
asserts what a consumer of ``scores`` sees:

* every transaction has a decision, and all decisions of one ``event_id`` are the same bytes;
* the feature vector logged at its first decision equals the offline reference over the stream
  as it arrived (each event counted once, whatever was repeated or retried);
* a copy within a batch is a dead letter ``duplicate_event_id``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

import numpy as np
import orjson
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.build import build_service
from engine.service import ScoringService
from engine.settings import Settings
from features.reference import reference_features
from features.spec import DEFAULT_SPEC
from features.store import RedisFeatureStore
from replay.inprocess import encode
from tests.property.test_features_properties import make_stream
from tests.unit.test_features_kernels import assert_features_equal

pytestmark = pytest.mark.integration
FEATURES = [f.name for f in DEFAULT_SPEC]


class Crash(Exception):
    """The process died after the feature update, before its outputs were flushed."""


class CommitOnFlushSink:
    """Kafka's view of a producer: what was sent counts only once flushed."""

    def __init__(self) -> None:
        self.pending: list[tuple[str, bytes]] = []
        self.out: dict[str, list[bytes]] = defaultdict(list)
        self.fail_next_flush = False
        self.fail_next_send = False

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        if self.fail_next_send:  # before the decision memo is written
            self.fail_next_send = False
            self.pending.clear()
            raise Crash
        self.pending.append((topic, value))

    def flush(self) -> None:
        if self.fail_next_flush:
            self.fail_next_flush = False
            self.pending.clear()
            raise Crash
        for topic, value in self.pending:
            self.out[topic].append(value)
        self.pending.clear()


@pytest.fixture(scope="module")
def service(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScoringService]:
    base, _, _ = redis_url.rpartition("/")
    s = Settings(redis_url=f"{base}/9", data_dir=tmp_path_factory.mktemp("svc"))
    svc = build_service(s, sink=CommitOnFlushSink(), use_registry=False)  # type: ignore[arg-type]
    yield svc
    svc.redis.flushdb()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.integers(0, 2**31), st.integers(5, 120), st.data())
def test_a_consumer_of_scores_sees_one_decision_per_transaction(
    service: ScoringService, seed: int, n: int, data: st.DataObject
) -> None:
    client: redis.Redis = service.redis
    client.flushdb()
    service.pipeline.features = RedisFeatureStore(client, DEFAULT_SPEC)  # nothing held over
    sink = CommitOnFlushSink()
    service.sink = sink  # type: ignore[assignment]
    s = make_stream(seed, n, 48 * 3_600_000, 4, 3)
    records = [
        {"event_id": s.ids[i], "ts": int(s.ts[i]), "amount": float(s.amount[i]),
         **{k: v[i] for k, v in s.ents.items()}}
        for i in range(n)
    ]  # fmt: skip
    order = list(range(n))
    for j, delay in data.draw(
        st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, 60)), max_size=30)
    ):
        order.insert(min(order.index(j) + 1 + delay, len(order)), j)
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(order) - 1), max_size=10))))
    bounds = [0, *cuts, len(order)]
    crashes = data.draw(
        st.dictionaries(st.integers(0, len(bounds) - 2), st.sampled_from(["send", "flush"]))
    )
    for b, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        batch = encode([records[i] for i in order[lo:hi]])
        if b in crashes:  # the first attempt counts the features, then dies: before the memo
            # was written ("send") or after it, before the flush ("flush"); then a retry
            if crashes[b] == "send":
                sink.fail_next_send = True
            else:
                sink.fail_next_flush = True
            with pytest.raises(Crash):
                service.process_transactions(batch)
        service.process_transactions(batch)

    by_id: dict[str, set[bytes]] = defaultdict(set)
    for v in sink.out["scores"]:
        by_id[orjson.loads(v)["event_id"]].add(v)
    assert set(by_id) == set(s.ids)
    assert all(len(v) == 1 for v in by_id.values()), [e for e, v in by_id.items() if len(v) > 1]
    dead = [orjson.loads(v) for v in sink.out["dead-letter"]]
    assert {d["reason"] for d in dead} <= {"duplicate_event_id"}
    in_batch = sum(
        (hi - lo) - len(set(order[lo:hi])) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
    )
    assert len(dead) == in_batch

    arrived = s.take(order)
    want = reference_features(arrived.ids, arrived.ts, arrived.amount, arrived.ents, DEFAULT_SPEC)
    first: dict[str, int] = {}
    for pos, e in enumerate(arrived.ids):
        first.setdefault(e, pos)
    logged = client.mget([f"rs:fv:{e}" for e in first])
    got = np.vstack([np.frombuffer(v, dtype=np.float64)[: len(FEATURES)] for v in logged])
    assert_features_equal(got, want[list(first.values())], FEATURES)


def test_the_sink_publishes_only_what_was_flushed() -> None:
    sink = CommitOnFlushSink()
    sink.send("scores", None, b"a")
    sink.fail_next_flush = True
    with pytest.raises(Crash):
        sink.flush()
    sink.send("scores", None, b"b")
    sink.fail_next_send = True
    with pytest.raises(Crash):
        sink.send("scores", None, b"c")
    sink.send("scores", None, b"d")
    sink.flush()
    assert sink.out["scores"] == [b"d"]
