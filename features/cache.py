"""The worker's copy of the buckets it has read or written, so that the server returns only what
the copy lacks.

A kind's values are spread over a fixed number of buckets (see ``features/update.lua``); a
bucket on the server is an append-only run of records, each ending with its value's hash, and an
epoch that changes whenever the bucket is rewritten. This copy knows, per bucket, the epoch and
how many bytes of it it holds. The server returns nothing for a bucket the copy holds whole, the
bytes appended since (by other workers, or by this one's batches still in flight) for a bucket
the copy holds a prefix of, and the whole bucket otherwise. A wrong copy is therefore never used,
whoever else writes the same keys: other workers, the labels script, compactions, a flushed
database.

Records are kept by value: one array (``pool``, the kind's stored columns) holds each value's
block (``start``, ``cnt`` records, room for ``cap``), addressed by the value's slot in its
entity's :class:`Slots`. Blocks move when they outgrow their room; the pool is repacked when it
is full. The copy is as large as the server's state of the buckets this worker touches; both are
bounded by compaction (records leave once no window can see them).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, types
from numba.typed import Dict

from features._types import FloatArray, IntArray
from features.hashing import HashArray

_START_SLOTS = 1024
_START_RECORDS = 1 << 16


class Slots:
    """Entity value (its 64-bit hash) -> slot number, shared by the kinds of one entity."""

    def __init__(self) -> None:
        self.index = Dict.empty(key_type=types.int64, value_type=types.int64)

    def of(self, hashes: HashArray) -> IntArray:
        """Slots of the values with these hashes (new ones are added)."""
        return _slots_of(self.index, np.ascontiguousarray(hashes).view(np.int64))

    def __len__(self) -> int:
        return len(self.index)


@njit(cache=True)
def _slots_of(index: Any, keys: IntArray) -> IntArray:  # pragma: no cover - compiled
    out = np.empty(keys.shape[0], np.int64)
    for i in range(keys.shape[0]):
        s = index.get(keys[i], -1)
        if s < 0:
            s = len(index)
            index[keys[i]] = s
        out[i] = s
    return out


class KindCache:
    """One kind's copy: records by value slot, and per bucket what of it is held."""

    def __init__(self, width: int, buckets: int) -> None:
        n = _START_SLOTS
        self.start = np.zeros(n, np.int64)
        self.cnt = np.zeros(n, np.int64)
        self.cap = np.zeros(n, np.int64)
        self.bucket = np.full(n, -1, np.int64)  # the bucket of the value in each slot
        self.hash = np.zeros(n, np.uint64)
        self.pool = np.zeros((_START_RECORDS, width))
        self.top = 0
        self.epoch = np.zeros(buckets)  # 0 = not held
        self.held = np.zeros(buckets, np.int64)  # bytes of the bucket held
        self.base = np.zeros(buckets, np.int64)  # bytes after the last compaction planned
        self.ttl_at = np.zeros(buckets)  # wall clock (s) of the last TTL renewal sent
        self.rewrite_at = np.zeros(buckets, np.int64)  # the batch that last sent a compaction
        self.inflight = np.zeros(buckets, np.int64)  # bytes appended by batches in flight

    def ensure(self, nslots: int) -> None:
        """Room for slots ``0..nslots-1``."""
        n = self.start.shape[0]
        if nslots <= n:
            return
        m = max(nslots, 2 * n)
        for name, fill in (("start", 0), ("cnt", 0), ("cap", 0), ("bucket", -1), ("hash", 0)):
            old = getattr(self, name)
            new = np.full(m, fill, dtype=old.dtype)
            new[:n] = old
            setattr(self, name, new)

    def clear(self, buckets: IntArray) -> None:
        """Drop every record of these buckets (before their whole content is loaded again)."""
        held = buckets[self.held[buckets] > 0]
        if held.size:
            self.cnt[np.isin(self.bucket, held)] = 0

    def gather(self, slots: IntArray, cols: IntArray) -> tuple[IntArray, FloatArray]:
        """Records of each value (7 columns), by value."""
        return _gather(slots, cols, self.start, self.cnt, self.pool)

    def add_batch(
        self, slots: IntArray, code: IntArray, counted: IntArray, batch7: FloatArray, cols: IntArray
    ) -> None:
        """Append the batch's counted records (event ``i`` to value ``code[i]``, in event order)
        after each value's own, in place where there is room."""
        tries = 0
        while True:
            top = _add_batch(
                slots,
                code,
                counted,
                batch7,
                cols,
                self.start,
                self.cnt,
                self.cap,
                self.pool,
                self.top,
            )
            if top >= 0:
                self.top = top
                return
            self._repack(4 * (int(counted.sum()) + slots.size), grow=tries > 0)
            tries += 1

    def _repack(self, incoming: int, grow: bool = False) -> None:
        """Move the blocks together into a pool with room for ``incoming`` more records (at
        least twice the old pool when ``grow``: a retry always makes progress)."""
        used = self.cnt[self.cnt > 0]
        need = int(np.maximum(4, 2 * used).sum()) + incoming + _START_RECORDS
        size = _START_RECORDS
        while size < need:
            size *= 2
        if grow:
            size = max(size, 2 * self.pool.shape[0])
        self.pool, self.top = _repack(self.start, self.cnt, self.cap, self.pool, size)

    def append(self, slots: IntArray, rec7: FloatArray, cols: IntArray) -> None:
        """Add records (7 columns; ``slots[i]`` owns ``rec7[i]``) after the values' own."""
        if slots.size == 0:
            return
        uniq, code = np.unique(slots, return_inverse=True)
        self.add_batch(uniq, code.astype(np.int64), np.ones(slots.size, np.int64), rec7, cols)


@njit(cache=True)
def _gather(
    slots: IntArray, cols: IntArray, start: IntArray, cnt: IntArray, pool: FloatArray
) -> tuple[IntArray, FloatArray]:  # pragma: no cover - compiled
    k = slots.shape[0]
    off = np.zeros(k + 1, np.int64)
    for j in range(k):
        off[j + 1] = off[j] + cnt[slots[j]]
    out = np.zeros((off[k], 7))
    w = cols.shape[0]
    for j in range(k):
        s = slots[j]
        o = off[j]
        a = start[s]
        for t in range(cnt[s]):
            for c in range(w):
                out[o + t, cols[c]] = pool[a + t, c]
    return off, out


@njit(cache=True)
def _add_batch(
    slots: IntArray,
    code: IntArray,
    counted: IntArray,
    batch: FloatArray,
    cols: IntArray,
    start: IntArray,
    cnt: IntArray,
    cap: IntArray,
    pool: FloatArray,
    top: int,
) -> int:  # pragma: no cover - compiled
    """See :meth:`KindCache.add_batch`; -1 if the pool is full (nothing written)."""
    k = slots.shape[0]
    add = np.zeros(k, np.int64)
    for i in range(code.shape[0]):
        if counted[i] and code[i] >= 0:
            add[code[i]] += 1
    need = top
    for j in range(k):
        m = cnt[slots[j]] + add[j]
        if add[j] > 0 and m > cap[slots[j]]:
            need += max(4, 2 * m)
    if need > pool.shape[0]:
        return -1
    w = cols.shape[0]
    for j in range(k):
        s = slots[j]
        m = cnt[s] + add[j]
        if add[j] > 0 and m > cap[s]:  # move to a bigger block
            b = top
            room = max(4, 2 * m)
            for t in range(cnt[s]):
                for c in range(w):
                    pool[b + t, c] = pool[start[s] + t, c]
            start[s] = b
            cap[s] = room
            top += room
    for i in range(code.shape[0]):
        j = code[i]
        if counted[i] and j >= 0:
            s = slots[j]
            r = start[s] + cnt[s]
            for c in range(w):
                pool[r, c] = batch[i, cols[c]]
            cnt[s] += 1
    return top


@njit(cache=True)
def _repack(
    start: IntArray, cnt: IntArray, cap: IntArray, pool: FloatArray, size: int
) -> tuple[FloatArray, int]:  # pragma: no cover - compiled
    out = np.zeros((size, pool.shape[1]))
    top = 0
    for s in range(start.shape[0]):
        m = cnt[s]
        if m == 0:
            cap[s] = 0
            continue
        room = max(4, 2 * m)
        for t in range(m):
            for c in range(pool.shape[1]):
                out[top + t, c] = pool[start[s] + t, c]
        start[s] = top
        cap[s] = room
        top += room
    return out, top


def warm_up() -> None:
    """Compile (or load from the on-disk cache) the cache's kernels."""
    Slots().of(np.array([3, 5, 3], dtype=np.uint64))
    cache = KindCache(2, 4)
    cache.ensure(2)
    cols = np.array([0, 1], dtype=np.int64)
    cache.append(np.array([0, 1, 0], dtype=np.int64), np.zeros((3, 7)), cols)
    cache.pool, cache.top = _repack(cache.start, cache.cnt, cache.cap, cache.pool, 1 << 10)
