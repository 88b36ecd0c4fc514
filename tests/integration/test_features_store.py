"""RedisFeatureStore against a real Valkey/Redis server (fixtures in tests/conftest.py)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import redis

from features.reference import reference_features
from features.spec import DEFAULT_SPEC, FeatureSpec
from features.store import RedisFeatureStore
from tests.unit.test_features_kernels import (
    T0,
    assert_features_equal,
    random_stream,
    run_in_batches,
)

pytestmark = pytest.mark.integration


class CountingRedis(redis.Redis):
    """Counts the commands sent (a script call is one EVALSHA)."""

    commands: list[str]

    def execute_command(self, *args: object, **options: object) -> object:
        self.commands.append(str(args[0]))
        return super().execute_command(*args, **options)


def test_matches_reference_over_varying_batches(redis_client: redis.Redis) -> None:
    stream = random_stream(4000, seed=11, cards=40, dup_rate=0.03)
    store = RedisFeatureStore(redis_client)
    store.warm_up()
    rng = np.random.default_rng(5)
    cuts = np.cumsum(rng.integers(1, 400, 60))
    got = run_in_batches(store, stream, [int(c) for c in cuts if c < 4000])
    assert_features_equal(got, reference_features(*stream))


def test_one_round_trip_per_batch(redis_url: str) -> None:
    client = CountingRedis.from_url(redis_url)
    client.commands = []
    client.flushdb()
    store = RedisFeatureStore(client)
    ids, ts, amounts, ents = random_stream(300, seed=3)
    store.update_batch(ids[:100], ts[:100], amounts[:100], {k: v[:100] for k, v in ents.items()})
    client.commands.clear()
    store.update_batch(ids[100:], ts[100:], amounts[100:], {k: v[100:] for k, v in ents.items()})
    assert client.commands == ["EVALSHA"]
    client.close()


def test_redelivery_never_counts_twice(redis_client: redis.Redis) -> None:
    store = RedisFeatureStore(redis_client)
    names = store.feature_names
    ts = np.array([T0, T0 + 1000, T0 + 2000], dtype=np.int64)
    amounts = np.array([10.0, 20.0, 30.0])
    cards = {"card_id": ["c1", "c1", "c1"], "merchant_id": ["m", "m", "m"]}
    x1 = store.update_batch(["a", "b", "c"], ts, amounts, cards)
    assert x1[:, names.index("card_id_count_1h")].tolist() == [1, 2, 3]
    # "b" redelivered in a later batch, then twice in the same batch with a new event
    x2 = store.update_batch(["b"], ts[1:2], amounts[1:2], {k: v[1:2] for k, v in cards.items()})
    assert x2[0, names.index("card_id_count_1h")] == 3  # sees a, b, c; b not added again
    assert x2[0, names.index("card_id_sum_1h")] == 60.0
    x3 = store.update_batch(
        ["d", "d", "c"],
        np.array([T0 + 3000, T0 + 3000, T0 + 2000], dtype=np.int64),
        np.array([1.0, 1.0, 30.0]),
        {"card_id": ["c1"] * 3, "merchant_id": ["m"] * 3},
    )
    assert x3[:, names.index("card_id_count_1h")].tolist() == [4, 4, 4]
    assert x3[:, names.index("card_id_sum_1h")].tolist() == [61.0, 61.0, 61.0]
    assert x3[:, names.index("merchant_id_count_24h")].tolist() == [4, 4, 4]
    key = store.state_key("card_id", 60, "c1")
    assert sum(int(v) for f, v in redis_client.hgetall(key).items() if f.startswith(b"c")) == 4


def test_survives_script_flush(redis_client: redis.Redis) -> None:
    store = RedisFeatureStore(redis_client)
    ids, ts, amounts, ents = random_stream(200, seed=4, dup_rate=0.0)
    want = reference_features(ids, ts, amounts, ents)
    first = store.update_batch(
        ids[:100], ts[:100], amounts[:100], {k: v[:100] for k, v in ents.items()}
    )
    redis_client.script_flush()
    second = store.update_batch(
        ids[100:], ts[100:], amounts[100:], {k: v[100:] for k, v in ents.items()}
    )
    assert_features_equal(np.vstack([first, second]), want)


def test_keys_expire_and_old_buckets_are_pruned(redis_client: redis.Redis) -> None:
    spec = (
        FeatureSpec.of("card_id", "sum", 3600, 60),
        FeatureSpec.of("merchant_id", "count", 86400, 600),
    )
    store = RedisFeatureStore(redis_client, spec, allowed_lateness_seconds=600)
    store.update_batch(
        ["a"], np.array([T0], np.int64), np.array([5.0]), {"card_id": ["c"], "merchant_id": ["m"]}
    )
    card = store.state_key("card_id", 60, "c")
    merchant = store.state_key("merchant_id", 600, "m")
    # horizon + lateness + 1 bucket
    assert 0 < redis_client.ttl(card) <= (60 + 10 + 1) * 60
    assert 0 < redis_client.ttl(merchant) <= (144 + 1 + 1) * 600
    assert 0 < redis_client.ttl(store.seen_key("a")) <= store.seen_ttl_seconds
    assert redis_client.hgetall(merchant) == {f"c{T0 // 600_000}".encode(): b"1"}  # count only
    # two hours later, the old bucket is out of every window + lateness: pruned on next touch
    later = T0 + 2 * 3600 * 1000
    x = store.update_batch(
        ["b"],
        np.array([later], np.int64),
        np.array([7.0]),
        {"card_id": ["c"], "merchant_id": ["m"]},
    )
    assert x.tolist() == [[7.0, 2.0]]
    fields = redis_client.hgetall(card)
    assert fields.keys() == {f"c{later // 60_000}".encode(), f"s{later // 60_000}".encode()}
    assert redis_client.ttl(card) > 0


def test_missing_entities_write_nothing(redis_client: redis.Redis) -> None:
    store = RedisFeatureStore(redis_client)
    x = store.update_batch(
        ["a"], np.array([T0], np.int64), np.array([5.0]), {"card_id": [""], "merchant_id": ["m"]}
    )
    names = store.feature_names
    assert np.isnan(x[0, names.index("card_id_count_1h")])
    assert x[0, names.index("merchant_id_count_24h")] == 1
    keys = sorted(k.decode() for k in redis_client.keys("rs:f:*"))
    assert keys == ["rs:f:merchant_id:600:m"]


def test_decoded_responses_client(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    stream = random_stream(300, seed=8)
    store = RedisFeatureStore(client)  # type: ignore[arg-type]
    got = run_in_batches(store, stream, range(50, 300, 50))
    assert_features_equal(got, reference_features(*stream))
    client.close()


def test_concurrent_workers_lose_no_increment(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    n_threads, per_thread = 4, 500
    rng = np.random.default_rng(9)
    cards = [f"c{x}" for x in rng.integers(0, 10, n_threads * per_thread)]

    def work(t: int) -> None:
        c = redis.Redis.from_url(redis_url)
        store = RedisFeatureStore(c, DEFAULT_SPEC)
        for b in range(0, per_thread, 50):
            idx = range(t * per_thread + b, t * per_thread + b + 50)
            # every event is delivered twice, by two different workers
            for _ in range(2):
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
    store = RedisFeatureStore(client)
    x = store.update_batch(
        ["probe"], np.array([T0], np.int64), np.array([1.0]), {"merchant_id": ["none"]}
    )
    assert x.shape == (1, len(store.feature_names))
    total = 0
    for key in client.scan_iter("rs:f:card_id:60:*"):
        total += sum(int(v) for f, v in client.hgetall(key).items() if f.startswith(b"c"))
    assert total == n_threads * per_thread
    client.close()
