"""Lateness per scope (card) and event-time expiry, against a real Valkey (tests/conftest.py).

A worker consumes several Kafka partitions (transactions keyed by card) that progress unevenly in
event time; one partition lagging the others by hours must not make its events "late", and every
value must still equal the offline reference (which knows nothing of partitions)."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from features.reference import first_deliveries, reference_features
from features.spec import DEFAULT_SPEC, FeatureSpec
from features.store import RedisFeatureStore
from tests.unit.test_features_kernels import T0, assert_features_equal

pytestmark = pytest.mark.integration
H = 3_600_000
DAY = 24 * H
FIELDS = ("card_id", "customer_id", "merchant_id", "device_id", "ip", "channel")


def two_partitions(
    n: int, seed: int, span_ms: int, lag_ms: int
) -> tuple[list[str], np.ndarray, np.ndarray, dict[str, list[str]]]:
    """Events of cards c0..c19 (partition A) and c20..c39 (partition B), merchants/devices/ips
    shared; arrival order = A in event time, B in event time ``lag_ms`` behind A."""
    rng = np.random.default_rng(seed)
    ts = T0 + np.sort(rng.integers(0, span_ms, n)).astype(np.int64)
    card = rng.integers(0, 40, n)
    part_b = card >= 20
    arrival = ts + np.where(part_b, lag_ms, 0)
    order = np.argsort(arrival, kind="stable")
    ts, card = ts[order], card[order]
    ents = {
        "card_id": [f"c{x}" for x in card],
        "customer_id": [f"u{x // 2}" for x in card],
        "merchant_id": [f"m{x}" for x in rng.integers(0, 6, n)],
        "device_id": [f"d{x % 7}" for x in card],
        "ip": [f"10.0.0.{x}" for x in rng.integers(0, 4, n)],
        "channel": [str(x) for x in rng.choice(["pos", "ecom"], n)],
    }
    amount = np.round(rng.gamma(2.0, 40.0, n), 2) + 0.01
    ids = [f"e{seed}_{i}" for i in range(n)]
    # a few redeliveries, shortly after the first delivery
    for i in np.flatnonzero(rng.random(n) < 0.02):
        j = int(rng.integers(max(0, i - 30), i + 1))
        if j < i:
            ids[i], ts[i], amount[i] = ids[j], ts[j], amount[j]
            for f in FIELDS:
                ents[f][i] = ents[f][j]
    return ids, ts, amount, ents


def run(store: RedisFeatureStore, stream: tuple, batch: int) -> np.ndarray:
    ids, ts, amount, ents = stream
    parts = []
    for a in range(0, len(ids), batch):
        b = a + batch
        sub = {k: v[a:b] for k, v in ents.items()}
        parts.append(store.update_batch(ids[a:b], ts[a:b], amount[a:b], sub))
    return np.vstack(parts)


@pytest.mark.parametrize("lag_h", [6, 20])
def test_lagging_partition_is_not_late_and_exact(redis_client: redis.Redis, lag_h: int) -> None:
    # lateness 10 min; partition B is 6 h / 20 h behind A (the default max skew is one day)
    stream = two_partitions(3000, seed=lag_h, span_ms=3 * DAY, lag_ms=lag_h * H)
    store = RedisFeatureStore(redis_client, DEFAULT_SPEC, allowed_lateness_seconds=600)
    store.warm_up()
    got = run(store, stream, 100)
    assert store.late_events == 0
    want = reference_features(*stream, DEFAULT_SPEC)
    # first deliveries: exact. A redelivery's value is its first delivery's only as far as
    # event time tells arrival order (records up to its time): the other partition's records
    # that arrived in between, with earlier times, are in it (see features.kernels).
    first = first_deliveries(stream[0])
    assert_features_equal(got[first], want[first], store.feature_names)


def test_lag_beyond_max_skew_is_late(redis_client: redis.Redis) -> None:
    spec = (FeatureSpec.of("merchant_id", "count", 86400, 600),)
    store = RedisFeatureStore(
        redis_client, spec, allowed_lateness_seconds=600, max_skew_seconds=3 * 3600
    )
    m = {"merchant_id": ["m"], "card_id": ["a"]}
    store.update_batch(["x"], np.array([T0 + 10 * H]), np.array([1.0]), m)
    other = {"merchant_id": ["m"], "card_id": ["b"]}
    store.update_batch(["y"], np.array([T0 + 8 * H]), np.array([1.0]), other)  # 2 h behind
    assert store.late_events == 0
    store.update_batch(["z"], np.array([T0 + 6 * H]), np.array([1.0]), other)  # 4 h behind
    assert store.late_events == 1  # scored against the state, not stored
    x = store.update_batch(["p"], np.array([T0 + 10 * H]), np.array([1.0]), m)
    assert x[0, 0] == 3  # x, y and p
    with pytest.raises(ValueError, match="max_skew_seconds"):
        RedisFeatureStore(redis_client, spec, allowed_lateness_seconds=600, max_skew_seconds=60)


def test_lateness_is_per_card(redis_client: redis.Redis) -> None:
    spec = (FeatureSpec.of("card_id", "count", 86400, 600),)
    store = RedisFeatureStore(redis_client, spec, allowed_lateness_seconds=600)
    store.update_batch(["a1"], np.array([T0 + 5 * H]), np.array([1.0]), {"card_id": ["a"]})
    # card b is 5 h behind card a (another partition): not late
    x = store.update_batch(["b1"], np.array([T0]), np.array([1.0]), {"card_id": ["b"]})
    assert store.late_events == 0 and x[0, 0] == 1
    # but 1 h behind card b's own newest event: late
    store.update_batch(["b2"], np.array([T0 + 2 * H]), np.array([1.0]), {"card_id": ["b"]})
    x = store.update_batch(["b3"], np.array([T0 + H]), np.array([1.0]), {"card_id": ["b"]})
    assert store.late_events == 1 and x[0, 0] == 1


def test_seen_days_expire_in_event_time(redis_client: redis.Redis) -> None:
    spec = (FeatureSpec.of("card_id", "count", 3600, 60),)
    store = RedisFeatureStore(
        redis_client, spec, allowed_lateness_seconds=600, max_skew_seconds=2 * 3600
    )
    day0 = (T0 // DAY + 1) * DAY
    n = 10 * 24
    ts = day0 + np.arange(n, dtype=np.int64) * H  # ten days, one event an hour
    ids = [f"e{i}" for i in range(n)]
    for a in range(0, n, 24):
        store.update_batch(ids[a : a + 24], ts[a : a + 24], np.ones(24), {"card_id": ["c"] * 24})
    days = sorted(int(k.decode().rsplit(":", 1)[1]) for k in redis_client.keys("rs:seen:t:*"))
    # retention 2 h: only the last day (and the one the 2 h reach into) are kept
    assert days and days[0] >= day0 // DAY + 8 and len(days) <= 2
    assert redis_client.zcard("rs:days:t") == len(days)
    # an event of a deleted day redelivered: too late, never counted twice (its first delivery's
    # record may or may not have been compacted away yet)
    x = store.update_batch(["e0"], ts[:1], np.ones(1), {"card_id": ["c"]})
    assert store.late_events == 1 and x[0, 0] <= 1
    assert not redis_client.exists(f"rs:seen:t:{day0 // DAY}")


def test_handbook_like_replay_memory_is_bounded(redis_client: redis.Redis) -> None:
    """The number of seen day hashes does not grow with the length of the replay."""
    spec = DEFAULT_SPEC
    store = RedisFeatureStore(redis_client, spec)
    rng = np.random.default_rng(1)
    n = 120 * 50  # 120 days, 50 events a day
    ts = T0 + np.sort(rng.integers(0, 120 * DAY, n)).astype(np.int64)
    cards = [f"c{x}" for x in rng.integers(0, 30, n)]
    ents = {"card_id": cards, "merchant_id": [f"m{x}" for x in rng.integers(0, 9, n)]}
    ids = [f"e{i}" for i in range(n)]
    lab = 0
    for a in range(0, n, 500):
        b = a + 500
        due = int(np.searchsorted(ts + 7 * DAY, ts[min(b, n) - 1], side="right"))
        if due > lab:
            store.apply_labels_batch(ids[lab:due], ts[lab:due] + 7 * DAY, [True] * (due - lab))
            lab = due
        store.update_batch(
            ids[a:b], ts[a:b], np.ones(len(ids[a:b])), {k: v[a:b] for k, v in ents.items()}
        )
    seen = len(redis_client.keys("rs:seen:t:*"))
    lseen = len(redis_client.keys("rs:lseen:*"))
    # retention: the label features' reach (30 d window + 7 d delay + 1 d) + 1 d skew
    assert 35 <= seen <= 42
    assert lseen <= 42


def test_idle_entities_expire_in_event_time(redis_client: redis.Redis) -> None:
    spec = (
        FeatureSpec.of("card_id", "count", 3600, 60),
        FeatureSpec.of("card_id+merchant_id", "count", 3600, 60),
    )
    # one bucket per kind: 'old' shares it with the active card, whose appends make it compact
    store = RedisFeatureStore(
        redis_client,
        spec,
        allowed_lateness_seconds=600,
        max_skew_seconds=2 * 3600,
        buckets=1,
        compact_min_bytes=0,
    )
    one = {"card_id": ["old"], "merchant_id": ["m"]}
    store.update_batch(["x"], np.array([T0]), np.array([1.0]), one)
    assert store.holds("t:card_id", "old")
    assert store.holds("t:card_id|merchant_id", "old|m")
    n = 48
    ts = T0 + (np.arange(n, dtype=np.int64) + 1) * H
    ents = {"card_id": ["c"] * n, "merchant_id": ["m"] * n}
    for a in range(0, n, 8):
        sub = {k: v[a : a + 8] for k, v in ents.items()}
        store.update_batch([f"e{i}" for i in range(a, a + 8)], ts[a : a + 8], np.ones(8), sub)
    # 'old' is idle for far longer than skew + reach (2 h + 1 h 1 min): its records are gone
    assert not store.holds("t:card_id", "old")
    assert not store.holds("t:card_id|merchant_id", "old|m")
    assert store.holds("t:card_id", "c")
    # it comes back as a new card
    x = store.update_batch(["y"], ts[-1:], np.array([1.0]), one)
    assert x[0].tolist() == [1.0, 1.0]
