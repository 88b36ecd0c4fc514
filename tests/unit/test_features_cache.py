"""The worker's copy of bucket records: blocks per value survive growth and repacking."""

from __future__ import annotations

import numpy as np

from features.cache import KindCache, Slots
from features.hashing import hash64

COLS = np.array([0, 1, 2], dtype=np.int64)  # t, c, s


def rows(ts: list[float]) -> np.ndarray:
    out = np.zeros((len(ts), 7))
    out[:, 0] = ts
    out[:, 1] = 1.0
    out[:, 2] = np.arange(len(ts)) + 1.0
    return out


def test_slots_are_stable_and_new_values_get_new_ones() -> None:
    slots = Slots()
    h = hash64(["a", "b", "a"])
    first = slots.of(h)
    assert first[0] == first[2] != first[1]
    again = slots.of(hash64(["b", "c"]))
    assert again[0] == first[1] and again[1] not in first
    assert len(slots) == 3


def test_append_and_add_batch_keep_each_values_order_through_repacks() -> None:
    cache = KindCache(3, 4)
    n = 300
    cache.ensure(n)
    want: dict[int, list[float]] = {s: [] for s in range(n)}
    rng = np.random.default_rng(0)
    t = 0.0
    for step in range(40):  # enough growth to move blocks and repack the pool
        slots = rng.integers(0, n, 500)
        recs = rows([t + i for i in range(500)])
        t += 500
        if step % 2:
            cache.append(slots.astype(np.int64), recs, COLS)
            for s, r in zip(slots.tolist(), recs[:, 0].tolist(), strict=True):
                want[s].append(r)
        else:
            uniq, code = np.unique(slots, return_inverse=True)
            counted = (rng.random(500) < 0.7).astype(np.int64)
            cache.add_batch(uniq.astype(np.int64), code.astype(np.int64), counted, recs, COLS)
            for s, r, c in zip(slots.tolist(), recs[:, 0].tolist(), counted.tolist(), strict=True):
                if c:
                    want[s].append(r)
    everyone = np.arange(n, dtype=np.int64)
    off, got = cache.gather(everyone, COLS)
    for s in range(n):
        assert got[off[s] : off[s + 1], 0].tolist() == want[s]


def test_clear_drops_only_that_bucket() -> None:
    cache = KindCache(3, 2)
    cache.ensure(2)
    cache.bucket[:2] = [0, 1]
    cache.append(np.array([0, 1], dtype=np.int64), rows([1.0, 2.0]), COLS)
    cache.held[:] = 32
    cache.clear(np.array([0], dtype=np.int64))
    assert cache.cnt[:2].tolist() == [0, 1]


def test_many_new_small_values_at_once_fit() -> None:
    """A bucket loaded whole can bring tens of thousands of values of one record each."""
    cache = KindCache(3, 1)
    n = 70_000  # four records of room each: more than the old sizing gave (it looped)
    cache.ensure(n)
    cache.append(np.arange(n, dtype=np.int64), rows([float(i) for i in range(n)]), COLS)
    off, got = cache.gather(np.array([0, n - 1], dtype=np.int64), COLS)
    assert got[:, 0].tolist() == [0.0, float(n - 1)]
