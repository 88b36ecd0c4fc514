"""Amounts a fuzz run sent (found: a denormal amount made the ratio kernel divide by a zero mean
and fail its whole batch): every accepted amount gives the offline reference's features."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from features.reference import reference_features
from features.spec import DEFAULT_SPEC
from features.store import RedisFeatureStore
from tests.unit.test_features_kernels import assert_features_equal

pytestmark = pytest.mark.integration
T0 = 1_767_225_600_000


def test_denormal_zero_and_huge_amounts_match_the_reference(redis_client: redis.Redis) -> None:
    redis_client.flushdb()
    amounts = np.array([5e-324, 5e-324, 0.0, 0.0, 1e-300, 1e300, 12.5, 0.0, 5e-324, 7.0])
    n = len(amounts)
    ids = [f"h{i}" for i in range(n)]
    ts = T0 + np.arange(n, dtype=np.int64) * 1000
    ents = {"card_id": ["c"] * n, "merchant_id": ["m"] * n, "customer_id": ["u"] * n,
            "device_id": ["d"] * n, "ip": ["i"] * n, "channel": ["ecom"] * n}  # fmt: skip
    store = RedisFeatureStore(redis_client, DEFAULT_SPEC)
    store.warm_up()
    got = np.vstack([store.update_batch(ids[a : a + 3], ts[a : a + 3], amounts[a : a + 3],
                                        {k: v[a : a + 3] for k, v in ents.items()})
                     for a in range(0, n, 3)])  # fmt: skip
    want = reference_features(ids, ts, amounts, ents, DEFAULT_SPEC)
    assert_features_equal(got, want, store.feature_names)
    zero = store.feature_names.index("card_id_zero_amount_count_1h")
    assert got[:, zero].tolist() == [0, 0, 1, 2, 2, 2, 2, 3, 3, 3]
