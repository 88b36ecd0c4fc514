"""RedisFeatureStore against a real Valkey/Redis server (fixtures in tests/conftest.py)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import redis

from features.reference import reference_features
from features.spec import FeatureSpec
from features.store import RedisFeatureStore
from tests.unit.test_features_kernels import (
    T0,
    assert_features_equal,
    random_stream,
    run_in_batches,
)

pytestmark = pytest.mark.integration
DAY = 86_400_000


def test_matches_reference_over_varying_batches(redis_client: redis.Redis) -> None:
    stream = random_stream(1500, seed=11, cards=40, dup_rate=0.03)
    store = RedisFeatureStore(redis_client)
    store.warm_up()
    rng = np.random.default_rng(5)
    cuts = np.cumsum(rng.integers(1, 300, 40))
    got = run_in_batches(store, stream, [int(c) for c in cuts if c < 1500])
    want = reference_features(*stream)
    assert_features_equal(got, want, store.feature_names)


def test_one_round_trip_per_batch(redis_client: redis.Redis) -> None:
    store = RedisFeatureStore(redis_client)
    ids, ts, amounts, ents = random_stream(300, seed=3)
    run_in_batches(store, (ids, ts, amounts, ents), [100, 200])
    assert store.round_trips == 3


def test_redelivery_never_counts_twice(redis_client: redis.Redis) -> None:
    store = RedisFeatureStore(redis_client)
    names = store.feature_names
    ts = np.array([T0, T0 + 1000, T0 + 2000], dtype=np.int64)
    amounts = np.array([10.0, 20.0, 30.0])
    cards = {"card_id": ["c1", "c1", "c1"], "merchant_id": ["m", "m", "m"]}
    x1 = store.update_batch(["a", "b", "c"], ts, amounts, cards)
    assert x1[:, names.index("card_id_count_1h")].tolist() == [1, 2, 3]
    # a redelivery gets the value of its first delivery (records up to its time: a and b)
    x2 = store.update_batch(["b"], ts[1:2], amounts[1:2], {k: v[1:2] for k, v in cards.items()})
    assert x2[0, names.index("card_id_count_1h")] == 2
    assert x2[0, names.index("card_id_sum_1h")] == 30.0
    assert store.redelivered.tolist() == [True]
    x3 = store.update_batch(
        ["d", "d", "c"],
        np.array([T0 + 3000, T0 + 3000, T0 + 2000], dtype=np.int64),
        np.array([1.0, 1.0, 30.0]),
        {"card_id": ["c1"] * 3, "merchant_id": ["m"] * 3},
    )
    # d counted once (its copy in the batch sees it once); c redelivered: as at its first delivery
    assert x3[:, names.index("card_id_count_1h")].tolist() == [4, 4, 3]
    assert store.redelivered.tolist() == [False, False, True]
    assert x3[:, names.index("card_id_sum_1h")].tolist() == [61.0, 61.0, 60.0]
    assert x3[:, names.index("merchant_id_count_24h")].tolist() == [4, 4, 3]


def test_survives_script_flush(redis_client: redis.Redis) -> None:
    store = RedisFeatureStore(redis_client)
    ids, ts, amounts, ents = random_stream(200, seed=4, dup_rate=0.0)
    want = reference_features(ids, ts, amounts, ents)
    first = run_in_batches(
        store, (ids[:100], ts[:100], amounts[:100], {k: v[:100] for k, v in ents.items()}), []
    )
    redis_client.script_flush()
    second = run_in_batches(
        store, (ids[100:], ts[100:], amounts[100:], {k: v[100:] for k, v in ents.items()}), []
    )
    assert_features_equal(np.vstack([first, second]), want)


def test_late_events_are_counted_and_not_stored(redis_client: redis.Redis) -> None:
    spec = (FeatureSpec.of("card_id", "count", 86400, 600),)
    store = RedisFeatureStore(redis_client, spec, allowed_lateness_seconds=600)
    one = {"card_id": ["c"]}
    store.update_batch(["a"], np.array([T0 + 3_600_000]), np.array([1.0]), one)
    x = store.update_batch(["b"], np.array([T0 + 3_000_000]), np.array([1.0]), one)  # 10 min
    assert x[0, 0] == 1 and store.late_events == 0  # "a" is in a later bucket
    x = store.update_batch(["c"], np.array([T0]), np.array([1.0]), one)  # 1 h late
    assert store.late_events == 1
    assert x[0, 0] == 0  # scored against the state, not added
    x = store.update_batch(["d"], np.array([T0 + 3_600_000]), np.array([1.0]), one)
    assert x[0, 0] == 3


def test_labels_without_leakage(redis_client: redis.Redis) -> None:
    spec = (
        FeatureSpec.of("merchant_id", "fraud_rate", 86400, 3600, label_delay_seconds=86400),
        FeatureSpec.of("merchant_id", "fraud_count", 86400, 3600, label_delay_seconds=86400),
    )
    store = RedisFeatureStore(redis_client, spec)
    m = {"merchant_id": ["m", "m"]}
    store.update_batch(["a", "b"], np.array([T0, T0 + 1000]), np.array([1.0, 2.0]), m)
    # label of "a" known 30 hours later; a transaction 26 h later does not see it yet
    assert (
        store.apply_labels_batch(["a", "a", "zz"], [T0 + 30 * 3600_000] * 3, [True, True, True])
        == 1
    )
    assert store.labels_unknown == 1
    x = store.update_batch(
        ["c"], np.array([T0 + 26 * 3600_000]), np.array([1.0]), {"merchant_id": ["m"]}
    )
    assert x.tolist() == [[0.0, 0.0]]
    x = store.update_batch(
        ["d"], np.array([T0 + 31 * 3600_000]), np.array([1.0]), {"merchant_id": ["m"]}
    )
    assert x.tolist() == [[0.5, 1.0]]
    # redelivered label: not counted twice
    assert store.apply_labels_batch(["a"], [T0 + 30 * 3600_000], [True]) == 0


def test_account_events_feed_transaction_features(redis_client: redis.Redis) -> None:
    store = RedisFeatureStore(redis_client)
    names = store.feature_names
    n = store.update_events_batch(
        ["e1", "e2", "e3", "e3"],
        np.array([T0, T0 + 1000, T0 + 2000, T0 + 2000]),
        ["password_change", "login", "login", "login"],
        {"customer_id": ["u1", "u1", "u1", "u1"]},
        fields={"country": ["DE", "FR", "DE", "DE"]},
    )
    assert n == 3
    x = store.update_batch(
        ["t1"], np.array([T0 + 5000]), np.array([5.0]), {"customer_id": ["u1"], "card_id": ["c"]}
    )
    assert x[0, names.index("customer_id_password_change_count_24h")] == 1
    assert x[0, names.index("customer_id_login_countries_24h")] == 2
    assert x[0, names.index("customer_id_device_added_count_1h")] == 0


def test_concurrent_workers_lose_no_increment(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    n_threads, per_thread = 4, 300
    rng = np.random.default_rng(9)
    cards = [f"c{x}" for x in rng.integers(0, 10, n_threads * per_thread)]
    spec = (FeatureSpec.of("card_id", "count", 3600, 60),)

    def work(t: int) -> None:
        c = redis.Redis.from_url(redis_url)
        store = RedisFeatureStore(c, spec)
        for b in range(0, per_thread, 50):
            idx = range(t * per_thread + b, t * per_thread + b + 50)
            for _ in range(2):  # every event delivered twice, by two workers
                store.update_batch(
                    [f"e{i}" for i in idx],
                    np.full(50, T0, dtype=np.int64),
                    np.ones(50),
                    {"card_id": [cards[i] for i in idx]},
                )
        c.close()

    threads = [threading.Thread(target=work, args=(t % n_threads,)) for t in range(2 * n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    store = RedisFeatureStore(client, spec)
    total = 0.0
    for card in sorted(set(cards)):
        x = store.update_batch(
            [f"probe{card}"], np.array([T0]), np.array([1.0]), {"card_id": [card]}
        )
        total += x[0, 0] - 1
    assert total == n_threads * per_thread
    client.close()


def test_worker_copy_starts_afresh_past_its_value_cap(redis_client: redis.Redis) -> None:
    """Past cache_max_values the worker's copy is dropped between batches and read again
    whole: the features do not change."""
    spec = (FeatureSpec.of("card_id", "count", 86400, 600),)
    capped = RedisFeatureStore(redis_client, spec, prefix="cap:", cache_max_values=3)
    free = RedisFeatureStore(redis_client, spec, prefix="free:")
    for b in range(4):
        ids = [f"e{b}_{i}" for i in range(4)]
        ts = np.full(4, 1_767_225_600_000 + b * 60_000, dtype=np.int64)
        cards = {"card_id": [f"c{(b + i) % 6}" for i in range(4)]}
        got = capped.update_batch(ids, ts, np.ones(4), cards)
        want = free.update_batch(ids, ts, np.ones(4), cards)
        assert got.tolist() == want.tolist()
        assert len(capped._slots["card_id"]) <= 4  # noqa: SLF001 (the cap at work)
