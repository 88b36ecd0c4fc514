"""Shared helpers for the feature tests, and kernel checks without a server."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from features.kernels import AGG_CODES, compact, compact_values, compute_kind, warm_up

T0 = 1_700_000_000_000

Stream = tuple[list[str], np.ndarray, np.ndarray, dict[str, list[str]]]


def random_stream(
    n: int, seed: int, cards: int = 30, dup_rate: float = 0.05, jitter_ms: int = 0
) -> Stream:
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
    channel = [str(x) for x in rng.choice(["pos", "ecom"], n)]
    for i in np.flatnonzero(rng.random(n) < dup_rate):
        first = int(np.searchsorted(ts[:i], ts[i] - 30 * 60 * 1000))
        if first >= i:
            continue
        j = int(rng.integers(first, i))
        ids[i] = ids[j]
        ts[i] = ts[j]
        amounts[i] = amounts[j]
        cards_[i], merchants[i], customers[i] = cards_[j], merchants[j], customers[j]
        channel[i] = channel[j]
    ents = {
        "card_id": cards_,
        "merchant_id": merchants,
        "customer_id": customers,
        "device_id": customers,
        "ip": merchants,
        "channel": channel,
    }
    return ids, ts, amounts, ents


def run_in_batches(store: Any, stream: Stream, cuts: Sequence[int]) -> np.ndarray:
    ids, ts, amounts, ents = stream
    parts = []
    bounds = [0, *sorted(set(cuts)), len(ids)]
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        if a == b:
            continue
        sub = {k: v[a:b] for k, v in ents.items()}
        parts.append(store.update_batch(ids[a:b], ts[a:b], amounts[a:b], sub))
    return np.vstack(parts)


def assert_features_equal(got: np.ndarray, want: np.ndarray, names: Sequence[str] = ()) -> None:
    bad = ~np.isclose(got, want, rtol=1e-9, atol=1e-6, equal_nan=True)
    if bad.any():
        cols = sorted({names[c] if names else str(c) for c in np.nonzero(bad)[1].tolist()})
        row, col = np.argwhere(bad)[0]
        msg = f"{bad.sum()} values differ in {cols}; first row {row}: {got[row, col]} != "
        raise AssertionError(msg + f"{want[row, col]}")


def test_kernel_windows_and_aggregates() -> None:
    warm_up()
    # one value: stored records at 0s and 90s (amounts 10, 30); a batch event at 150s (amount 20)
    pre = np.zeros((2, 7))
    pre[:, 0] = [T0, T0 + 90_000]
    pre[:, 1] = 1.0
    pre[:, 2] = [10.0, 30.0]
    pre[:, 3] = [100.0, 900.0]
    pre[:, 4] = pre[:, 5] = pre[:, 2]
    batch = np.array([[T0 + 150_000, 1.0, 20.0, 400.0, 20.0, 20.0, 0.0]])
    aggs = ["count", "sum", "mean", "min", "max", "time_since_last", "ratio", "std"]
    out = np.zeros((1, len(aggs)))
    compute_kind(
        np.array([0], dtype=np.int64),
        np.array([1], dtype=np.int64),
        np.array([0], dtype=np.int64),
        np.array([T0 + 150_000], dtype=np.int64),
        np.array([20.0]),
        batch,
        np.array([0], dtype=np.int64),
        np.array([2], dtype=np.int64),
        pre,
        np.arange(7, dtype=np.int64),
        np.array([AGG_CODES[a] for a in aggs], dtype=np.int64),
        np.full(len(aggs), 60_000, dtype=np.int64),
        np.full(len(aggs), 2, dtype=np.int64),  # 2-minute window: buckets [T0+60s, T0+180s)
        np.zeros(len(aggs), dtype=np.int64),
        np.arange(len(aggs), dtype=np.int64),
        out,
    )
    # T0 is a multiple of 60 s; the record at T0 is outside, 90 s and the event are in
    assert out[0, :7].tolist() == [2.0, 50.0, 25.0, 20.0, 30.0, 60.0, 0.8]
    np.testing.assert_allclose(out[0, 7], 5.0)


def test_compact_merges_old_records_and_drops_expired() -> None:
    rec = np.zeros((4, 7))
    rec[:, 0] = [0, 10_000, 20_000, 3_000_000]
    rec[:, 1] = 1.0
    rec[:, 2] = [1.0, 2.0, 3.0, 4.0]
    rec[:, 4] = rec[:, 5] = rec[:, 2]
    off, out = compact(
        np.array([0, 4], dtype=np.int64),
        rec,
        3_000_000,
        0,
        2_990_000,
        np.array([0], dtype=np.int64),
        np.array([60_000], dtype=np.int64),
        False,
        True,
    )
    # record at 0 expired; 10 s and 20 s merge into one (t = 20 s); the recent one stays raw
    assert off.tolist() == [0, 2]
    out = out[np.argsort(out[:, 0])]  # the order of a value's records carries no meaning
    assert out[:, 0].tolist() == [20_000, 3_000_000]
    assert out[:, 1].tolist() == [2.0, 1.0]
    assert out[0, 4] == 2.0 and out[0, 5] == 3.0


def test_compact_values_per_value_reference_and_lateness() -> None:
    # two values with the same records (0 s, 10 s, 20 s, 3000 s); value 0 is compacted relative
    # to 3000 s, value 1 relative to 50 s (its own scope's clock): it keeps everything raw
    rec = np.zeros((8, 7))
    rec[:, 0] = [0, 10_000, 20_000, 3_000_000] * 2
    rec[:, 1] = 1.0
    off, out = compact_values(
        np.array([0, 4, 8], dtype=np.int64),
        rec,
        np.array([3_000_000, 50_000], dtype=np.int64),
        0,
        2_990_000,
        np.array([0], dtype=np.int64),
        np.array([60_000], dtype=np.int64),
        False,
        True,
    )
    assert off.tolist() == [0, 2, 6]
    assert sorted(out[:2, 0].tolist()) == [20_000, 3_000_000]
    # tiers are chosen by age minus the lateness: with a lateness of 2950 s nothing merges yet
    tiers = (np.array([0], dtype=np.int64), np.array([60_000], dtype=np.int64))
    off, _ = compact_values(
        np.array([0, 4], dtype=np.int64),
        rec[:4],
        np.array([3_000_000], dtype=np.int64),
        2_950_000,
        6_000_000,
        *tiers,
        False,
        True,
    )
    assert off.tolist() == [0, 4]
