"""Kernels + store logic against the offline reference, without a server.

``FakeScriptRedis`` runs the contract of ``features/update.lua`` in Python (same ARGV in, same
reply out), so the Python side and the Numba kernels are checked here on many batch splits; the
integration tests check the real script against the same reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.kernels import aggregate_group, parse_numbers, warm_up
from features.reference import reference_features
from features.spec import DEFAULT_SPEC, FeatureSpec
from features.store import RedisFeatureStore

T0 = 1_700_000_000_000


class FakeScriptRedis:
    """In-memory stand-in for Redis + update.lua (same inputs, same reply)."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.hashes: dict[str, dict[str, float]] = {}
        self.calls = 0

    def register_script(self, source: str) -> Any:
        assert "HINCRBY" in source
        return self._run

    def _run(self, keys: Sequence[str], args: Sequence[Any], client: Any = None) -> list[bytes]:
        self.calls += 1
        n, ng = int(args[0]), int(args[2])
        gm = [int(x) for x in str(args[3]).split()]
        keep: list[int] = []
        hassum: list[bool] = []
        for g in range(ng):
            cnt, kp, _ttl, hs = gm[4 * g : 4 * g + 4]
            keep += [kp] * cnt
            hassum += [hs == 1] * cnt
        lohi = np.frombuffer(args[4], dtype="<f8").astype(np.int64).tolist()
        amounts = [float(x) for x in str(args[5]).split()]
        refs = np.frombuffer(args[6], dtype="<f8").astype(np.int64).tolist()
        flags = []
        for i in range(n):
            new = keys[i] not in self.seen
            self.seen.add(keys[i])
            flags.append("1" if new else "0")
        state_keys = keys[n:]
        meta: list[str] = []
        data: list[str] = []
        floors: list[float] = []
        for j, key in enumerate(state_keys):
            h = self.hashes.setdefault(key, {})
            bs = [int(f[1:]) for f in h]
            if not bs:
                floors.append(float("-inf"))
                meta.append("0 -1e18")
                continue
            maxb = max(bs)
            floors.append(maxb - keep[j] + 1)
            prune = max(maxb, lohi[2 * j + 1]) - keep[j] + 1
            lo, hi = lohi[2 * j], lohi[2 * j + 1]
            cnt = 0
            for f in [f for f in h if f[0] == "c"]:
                b = int(f[1:])
                if lo <= b <= hi:
                    data += [str(b), str(int(h[f])), repr(h.get(f"s{b}", 0.0))]
                    cnt += 1
            for f in [f for f in h if int(f[1:]) < prune]:
                del h[f]
            meta.append(f"{cnt} {maxb - keep[j] + 1}")
        for i in range(n):
            for g in range(ng):
                kk, b = refs[2 * (i * ng + g)], refs[2 * (i * ng + g) + 1]
                if flags[i] == "1" and kk > 0 and b >= floors[kk - 1]:
                    h = self.hashes[state_keys[kk - 1]]
                    h[f"c{b}"] = h.get(f"c{b}", 0) + 1
                    if hassum[kk - 1]:
                        h[f"s{b}"] = h.get(f"s{b}", 0.0) + amounts[i]
        return ["".join(flags).encode(), " ".join(meta).encode(), " ".join(data).encode()]


def random_stream(
    n: int, seed: int, cards: int = 30, dup_rate: float = 0.05, jitter_ms: int = 0
) -> tuple[list[str], np.ndarray, np.ndarray, dict[str, list[str]]]:
    """A time-ordered stream (optionally jittered) with redeliveries and missing customers."""
    rng = np.random.default_rng(seed)
    ts = T0 + np.sort(rng.integers(0, 30 * 3600 * 1000, n))
    if jitter_ms:
        ts = ts + rng.integers(-jitter_ms, jitter_ms + 1, n)
    ids = [f"e{i}" for i in range(n)]
    amounts = np.round(rng.gamma(2.0, 40.0, n), 2) + 0.01
    cards_ = [f"c{x}" for x in rng.integers(0, cards, n)]
    merchants = [f"m{x}" for x in rng.integers(0, 5, n)]
    customers = ["" if x < 3 else f"u{x}" for x in rng.integers(0, 20, n)]
    # redeliveries: copy an earlier event (same id and content) to a later position, at most
    # 30 minutes of event time later (within the store's allowed lateness of 1 h)
    for i in np.flatnonzero(rng.random(n) < dup_rate):
        first = int(np.searchsorted(ts[:i], ts[i] - 30 * 60 * 1000))
        if first >= i:
            continue
        j = int(rng.integers(first, i))
        ids[i] = ids[j]
        ts[i] = ts[j]
        amounts[i] = amounts[j]
        cards_[i], merchants[i], customers[i] = cards_[j], merchants[j], customers[j]
    ents = {"card_id": cards_, "merchant_id": merchants, "customer_id": customers}
    return ids, ts, amounts, ents


def run_in_batches(
    store: RedisFeatureStore,
    stream: tuple[list[str], np.ndarray, np.ndarray, dict[str, list[str]]],
    cuts: Sequence[int],
) -> np.ndarray:
    ids, ts, amounts, ents = stream
    parts = []
    bounds = [0, *sorted(set(cuts)), len(ids)]
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        if a == b:
            continue
        sub = {k: v[a:b] for k, v in ents.items()}
        parts.append(store.update_batch(ids[a:b], ts[a:b], amounts[a:b], sub))
    return np.vstack(parts)


def assert_features_equal(got: np.ndarray, want: np.ndarray) -> None:
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-6, equal_nan=True)


def test_parse_numbers() -> None:
    text = b"1 -2.5 3e-2 123.45000000000000284 0.000123  -1e18 100000000000000000000\n0"
    got = parse_numbers(np.frombuffer(text, dtype=np.uint8))
    want = [1, -2.5, 0.03, 123.45, 0.000123, -1e18, 1e20, 0]
    np.testing.assert_allclose(got, want, rtol=1e-15)
    assert parse_numbers(np.frombuffer(b"", dtype=np.uint8)).shape == (0,)
    with pytest.raises(ValueError, match="malformed"):
        parse_numbers(np.frombuffer(b"1 x2", dtype=np.uint8))


def test_kernel_window_start_is_rounded_to_the_bucket() -> None:
    warm_up()
    # one value, windows of 2 and 3 buckets; pre-state: bucket 7 (count 1, sum 10), 9 (2, 5)
    out = np.zeros((3, 3))
    aggregate_group(
        np.array([0, 0, 0], dtype=np.int64),
        np.array([10, 10, 12], dtype=np.int64),
        np.array([1.0, 2.0, 4.0]),
        np.array([True, False, True]),  # the second event is a redelivery
        np.array([0, 2], dtype=np.int64),
        np.array([7, 9], dtype=np.int64),
        np.array([1.0, 2.0]),
        np.array([10.0, 5.0]),
        np.array([2, 4], dtype=np.int64),
        np.array([0, -1], dtype=np.int64),
        np.array([-1, 1], dtype=np.int64),
        np.array([-1, 2], dtype=np.int64),
        out,
    )
    # event 0 at bucket 10: 2-bucket window = [9, 10] -> 2 + 1; 4-bucket [7, 10] -> sum 16
    # event 1 (redelivered, not counted again): same as event 0
    # event 2 at bucket 12: [11, 12] -> itself; [9, 12] -> 5 + 1 + 4 over 4 events
    np.testing.assert_allclose(out[:, 0], [3, 3, 1])
    np.testing.assert_allclose(out[:, 1], [16, 16, 10])
    np.testing.assert_allclose(out[:, 2], [4, 4, 2.5])


@pytest.mark.parametrize("batch", [1, 7, 64, 500, 3000])
def test_store_matches_reference_for_any_batch_size(batch: int) -> None:
    stream = random_stream(3000, seed=1)
    store = RedisFeatureStore(FakeScriptRedis(), DEFAULT_SPEC)  # type: ignore[arg-type]
    got = run_in_batches(store, stream, range(batch, 3000, batch))
    want = reference_features(*stream, spec=DEFAULT_SPEC)
    assert_features_equal(got, want)


def test_disorder_within_allowed_lateness_matches_reference() -> None:
    stream = random_stream(2000, seed=2, jitter_ms=20 * 60 * 1000)
    store = RedisFeatureStore(FakeScriptRedis(), DEFAULT_SPEC)  # type: ignore[arg-type]
    got = run_in_batches(store, stream, range(37, 2000, 37))
    assert_features_equal(got, reference_features(*stream))


def test_missing_entity_gives_nan_and_writes_nothing() -> None:
    fake = FakeScriptRedis()
    store = RedisFeatureStore(fake, DEFAULT_SPEC)  # type: ignore[arg-type]
    x = store.update_batch(
        ["a", "b"],
        np.array([T0, T0 + 1], dtype=np.int64),
        np.array([5.0, 7.0]),
        {"card_id": ["c1", None], "merchant_id": ["", "m1"]},  # type: ignore[list-item]
    )
    names = store.feature_names
    assert x[0, names.index("card_id_count_1h")] == 1
    assert np.isnan(x[1, names.index("card_id_sum_1h")])
    assert np.isnan(x[0, names.index("merchant_id_count_24h")])
    assert x[1, names.index("merchant_id_count_24h")] == 1
    assert np.isnan(x[:, names.index("customer_id_count_24h")]).all()
    assert sorted(fake.hashes) == [
        "rs:f:card_id:600:c1",
        "rs:f:card_id:60:c1",
        "rs:f:merchant_id:600:m1",
    ]
    assert fake.calls == 1
    assert store.update_batch([], np.array([], np.int64), np.array([]), {}).shape == (0, len(names))


def test_custom_spec_and_input_checks() -> None:
    spec = (
        FeatureSpec.of("ip", "count", 600, 60),
        FeatureSpec.of("ip", "mean", 300, 60),
        FeatureSpec.of("device_id", "sum", 7 * 86400, 3600),
    )
    stream = random_stream(800, seed=3)
    ids, ts, amounts, ents = stream
    ents2 = {"ip": ents["card_id"], "device_id": ents["customer_id"]}
    store = RedisFeatureStore(FakeScriptRedis(), spec)  # type: ignore[arg-type]
    assert store.feature_names == ["ip_count_10m", "ip_mean_5m", "device_id_sum_7d"]
    got = run_in_batches(store, (ids, ts, amounts, ents2), range(50, 800, 50))
    assert_features_equal(got, reference_features(ids, ts, amounts, ents2, spec))
    with pytest.raises(ValueError, match="finite"):
        store.update_batch(["z"], np.array([T0]), np.array([np.nan]), ents2)
    with pytest.raises(ValueError, match="shape"):
        store.update_batch(["z"], np.array([T0, T0]), np.array([1.0]), ents2)
    with pytest.raises(ValueError, match="seen_ttl_seconds"):
        RedisFeatureStore(FakeScriptRedis(), spec, seen_ttl_seconds=3600)  # type: ignore[arg-type]


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 300),
    cuts=st.lists(st.integers(0, 300), max_size=12),
)
def test_batch_splitting_invariance(seed: int, n: int, cuts: list[int]) -> None:
    stream = random_stream(n, seed=seed, cards=5, dup_rate=0.1)
    store = RedisFeatureStore(FakeScriptRedis(), DEFAULT_SPEC)  # type: ignore[arg-type]
    got = run_in_batches(store, stream, [c for c in cuts if c < n])
    assert_features_equal(got, reference_features(*stream))
