"""The same in-order stream cut into batches of different sizes gives the same features, equal to
the offline reference, against a real Valkey (tests/conftest.py).

Regression: the event-time sweep of idle entity values (``rs:idx:*``) used the watermark *after*
the batch. A batch spanning more event time than ``max_skew`` + an entity's reach (1,000
transactions over ~3 days; customer and device have only 24 h features, so idle = ~2 days)
deleted, before reading them, the stored records of values its own early events still needed:
``customer_id_count_24h`` right after a batch boundary missed the customer's transactions of the
previous batch, while small batches (or batches cut by labels) were right."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from features.reference import reference_features
from features.spec import DEFAULT_SPEC
from features.store import RedisFeatureStore
from tests.unit.test_features_kernels import T0, assert_features_equal

pytestmark = pytest.mark.integration
DAY = 86_400_000


def in_order_stream(
    n: int, seed: int, span_ms: int
) -> tuple[list[str], np.ndarray, np.ndarray, dict[str, list[str]]]:
    """``n`` transactions in event-time order over ``span_ms``: 150 customers (one card each,
    sometimes two), 25 merchants, devices per customer, a fresh-ish ip per transaction."""
    rng = np.random.default_rng(seed)
    ts = T0 + np.sort(rng.integers(0, span_ms, n)).astype(np.int64)
    cust = rng.integers(0, 150, n)
    card = cust * 2 + (rng.random(n) < 0.2)
    ents = {
        "card_id": [f"c{x}" for x in card],
        "customer_id": [f"u{x}" for x in cust],
        "merchant_id": [f"m{x}" for x in rng.integers(0, 25, n)],
        "device_id": [f"d{x // 3}" for x in cust],
        "ip": [f"10.0.{x // 250}.{x % 250}" for x in rng.integers(0, 2000, n)],
        "channel": [str(x) for x in rng.choice(["pos", "ecom"], n)],
    }
    amount = np.round(rng.gamma(2.0, 40.0, n), 2) + 0.01
    return [f"b{seed}_{i}" for i in range(n)], ts, amount, ents


def run(store: RedisFeatureStore, stream: tuple, batch: int) -> np.ndarray:
    ids, ts, amount, ents = stream
    parts = []
    for a in range(0, len(ids), batch):
        b = a + batch
        sub = {k: v[a:b] for k, v in ents.items()}
        parts.append(store.update_batch(ids[a:b], ts[a:b], amount[a:b], sub))
    return np.vstack(parts)


def test_batching_does_not_change_features(redis_client: redis.Redis) -> None:
    # 3,000 transactions over 10 days: a batch of 1,000 spans ~3.3 days, more than the default
    # max skew (1 day) + the reach of the 24 h customer/device features
    stream = in_order_stream(3000, seed=7, span_ms=10 * DAY)
    got = {}
    for batch in (1000, 37):
        redis_client.flushdb()
        store = RedisFeatureStore(redis_client, DEFAULT_SPEC)
        store.warm_up()
        got[batch] = run(store, stream, batch)
        assert store.late_events == 0
    names = store.feature_names
    assert len(names) == 31
    want = reference_features(*stream, DEFAULT_SPEC)
    # counts, distinct counts and times are exact; sums/means may differ in the last bit (merged
    # records add in another order), hence the shared tolerance for the whole matrix
    exact = [j for j, f in enumerate(DEFAULT_SPEC) if f.agg in ("count", "distinct")]
    assert exact
    for batch, x in got.items():
        assert x.shape == want.shape
        np.testing.assert_array_equal(x[:, exact], want[:, exact], err_msg=f"batch {batch}")
        assert_features_equal(x, want, names)
    np.testing.assert_array_equal(got[1000][:, exact], got[37][:, exact])
    assert_features_equal(got[1000], got[37], names)
