"""The worker's copy of the records it has read or written, so that the server returns only what
changed.

Every stored value (kind x entity value) has an epoch on the server (random when the value is
created, changed when it is rewritten) and a length that only appends change. A worker sends the
epoch and length it expects; when both match, the server returns nothing for that value and the
records come from here. Otherwise the server returns the whole value and this copy is
replaced. A wrong copy is therefore never used, whoever else writes the same keys: other workers,
the labels script, compactions, idle expiry, a flushed database.

A kind's records live in one array (``pool``, the kind's stored columns), each value in a block
(``start``, ``cnt`` records, room for ``cap``) addressed by the value's slot in its entity's
:class:`Slots`. Blocks move when they outgrow their room; the pool is repacked when it is full,
and past ``max_records`` the values no batch in flight has sent are forgotten first.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import njit

from features._types import FloatArray, IntArray

_START_SLOTS = 1024
_START_RECORDS = 1 << 16


class Slots:
    """Entity value -> slot number, shared by the kinds of one entity (card, merchant, ...).

    Past ``max_slots`` values, those not sent by the last ``IDLE_BATCHES`` batches are forgotten
    (their slots are reused); a value in flight is never forgotten.
    """

    IDLE_BATCHES = 8

    def __init__(self, max_slots: int) -> None:
        self.max_slots = max_slots
        self.index: dict[str, int] = {}
        self.values: list[str] = []
        self.last = np.full(_START_SLOTS, -1, np.int64)
        self.free: list[int] = []
        #: Per source: the newest event time last sent for the value's idle index (-inf: none).
        self.indexed: dict[str, FloatArray] = {}

    def of(self, values: Sequence[str], batch: int) -> tuple[IntArray, IntArray]:
        """Slots of ``values`` (new ones are added), and the slots forgotten to make room."""
        index = self.index
        get = index.get
        slots = np.fromiter((get(v, -1) for v in values), np.int64, count=len(values))
        new = np.flatnonzero(slots < 0)
        dropped = np.zeros(0, np.int64)
        if new.size and len(index) + new.size > self.max_slots:
            dropped = self._forget(batch)
        for j in new.tolist():
            v = values[j]
            if self.free:
                s = self.free.pop()
                self.values[s] = v
            else:
                s = len(self.values)
                self.values.append(v)
            index[v] = s
            slots[j] = s
        if len(self.values) > self.last.shape[0]:
            size = max(len(self.values), 2 * self.last.shape[0])
            grown = np.full(size, -1, np.int64)
            grown[: self.last.shape[0]] = self.last
            self.last = grown
            for src, old in self.indexed.items():
                more = np.full(size, -np.inf)
                more[: old.shape[0]] = old
                self.indexed[src] = more
        self.last[slots] = batch
        return slots, dropped

    def index_marks(self, source: str) -> FloatArray:
        """The newest event time last sent to ``source``'s idle index, by slot."""
        marks = self.indexed.get(source)
        if marks is None:
            marks = self.indexed[source] = np.full(self.last.shape[0], -np.inf)
        return marks

    def _forget(self, batch: int) -> IntArray:
        used = np.arange(len(self.values))
        idle = used[(self.last[: len(self.values)] < batch - self.IDLE_BATCHES)]
        idle = idle[[self.values[s] in self.index for s in idle.tolist()]]
        for s in idle.tolist():
            del self.index[self.values[s]]
            self.values[s] = ""
        self.last[idle] = -1
        for marks in self.indexed.values():
            marks[idle] = -np.inf
        self.free.extend(idle.tolist())
        return idle


class KindCache:
    """Records and expected epochs/lengths of one kind's values, by slot (see the module
    docstring)."""

    def __init__(self, width: int, max_records: int) -> None:
        self.width = width
        self.max_records = max_records
        self.reset()

    def reset(self, nslots: int = _START_SLOTS) -> None:
        """Forget everything: every value is read whole from the server when next seen."""
        n = max(nslots, _START_SLOTS)
        self.epoch = np.zeros(n)  # expected epoch on the server; 0 = unknown
        self.plen = np.zeros(n, np.int64)  # expected length (bytes), appends in flight included
        self.last_batch = np.full(n, -1, np.int64)  # the last batch that sent this value
        self.start = np.zeros(n, np.int64)
        self.cnt = np.zeros(n, np.int64)
        self.cap = np.zeros(n, np.int64)
        self.base = np.zeros(n, np.int64)  # records after the last compaction planned
        self.ttl_at = np.zeros(n)  # wall clock (s) of the last TTL refresh sent
        self.pool = np.zeros((_START_RECORDS, self.width))
        self.top = 0

    def forget(self, slots: IntArray) -> None:
        """Forget these values (their blocks are reclaimed by the next repack)."""
        if slots.size:
            slots = slots[slots < self.epoch.shape[0]]
            self.epoch[slots] = 0.0
            self.plen[slots] = 0
            self.cnt[slots] = 0
            self.cap[slots] = 0
            self.base[slots] = 0
            self.ttl_at[slots] = 0.0
            self.last_batch[slots] = -1

    def ensure(self, nslots: int) -> None:
        """Room for slots ``0..nslots-1``."""
        n = self.epoch.shape[0]
        if nslots <= n:
            return
        m = max(nslots, 2 * n)
        for name, fill in (
            ("epoch", 0.0),
            ("plen", 0),
            ("last_batch", -1),
            ("start", 0),
            ("cnt", 0),
            ("cap", 0),
            ("base", 0),
            ("ttl_at", 0.0),
        ):
            old = getattr(self, name)
            new = np.full(m, fill, dtype=old.dtype)
            new[:n] = old
            setattr(self, name, new)

    def gather(
        self,
        slots: IntArray,
        full: IntArray,
        full_off: IntArray,
        full_rec: FloatArray,
        cols: IntArray,
    ) -> tuple[IntArray, FloatArray]:
        """Pre-batch records of each value (7 columns): from here, or from the server's reply
        where ``full[j]``."""
        return _gather(slots, full, full_off, full_rec, cols, self.start, self.cnt, self.pool)

    def store(
        self, slots: IntArray, post_off: IntArray, post: FloatArray, cols: IntArray, batch: int
    ) -> None:
        """Keep each value's post-batch records (7 columns in, the kind's columns kept)."""
        while True:
            top = _store(
                slots, post_off, post, cols, self.start, self.cnt, self.cap, self.pool, self.top
            )
            if top >= 0:
                self.top = top
                return
            self._repack(int(post_off[-1]), batch)

    def _repack(self, incoming: int, batch: int) -> None:
        """Move the blocks together; past ``max_records``, forget the values no batch in
        flight has sent (an idle value's next read is whole); grow when still short."""
        live = int(self.cnt.sum())
        if live + incoming > self.max_records:
            idle = np.flatnonzero((self.cap > 0) & (self.last_batch < batch - Slots.IDLE_BATCHES))
            self.forget(idle)
            live = int(self.cnt.sum())
        size = _START_RECORDS
        while size < 2 * (live + incoming) + _START_RECORDS:
            size *= 2
        self.pool, self.top = _repack(self.start, self.cnt, self.cap, self.pool, size)


@njit(cache=True)
def _gather(
    slots: IntArray,
    full: IntArray,
    full_off: IntArray,
    full_rec: FloatArray,
    cols: IntArray,
    start: IntArray,
    cnt: IntArray,
    pool: FloatArray,
) -> tuple[IntArray, FloatArray]:  # pragma: no cover - compiled
    k = slots.shape[0]
    off = np.zeros(k + 1, np.int64)
    f = 0
    for j in range(k):
        if full[j]:
            off[j + 1] = off[j] + full_off[f + 1] - full_off[f]
            f += 1
        else:
            off[j + 1] = off[j] + cnt[slots[j]]
    out = np.zeros((off[k], 7))
    f = 0
    w = cols.shape[0]
    for j in range(k):
        o = off[j]
        if full[j]:
            a = full_off[f]
            for t in range(full_off[f + 1] - a):
                for c in range(7):
                    out[o + t, c] = full_rec[a + t, c]
            f += 1
        else:
            s = slots[j]
            a = start[s]
            for t in range(cnt[s]):
                for c in range(w):
                    out[o + t, cols[c]] = pool[a + t, c]
    return off, out


@njit(cache=True)
def _store(
    slots: IntArray,
    post_off: IntArray,
    post: FloatArray,
    cols: IntArray,
    start: IntArray,
    cnt: IntArray,
    cap: IntArray,
    pool: FloatArray,
    top: int,
) -> int:  # pragma: no cover - compiled
    """Write each value's records in place or in a new block at ``top``; -1 if the pool is full
    (nothing written)."""
    need = top
    for j in range(slots.shape[0]):
        m = post_off[j + 1] - post_off[j]
        if m > cap[slots[j]]:
            need += max(4, 2 * m)
    if need > pool.shape[0]:
        return -1
    w = cols.shape[0]
    for j in range(slots.shape[0]):
        s = slots[j]
        a = post_off[j]
        m = post_off[j + 1] - a
        if m > cap[s]:
            start[s] = top
            cap[s] = max(4, 2 * m)
            top += cap[s]
        b = start[s]
        for t in range(m):
            for c in range(w):
                pool[b + t, c] = post[a + t, cols[c]]
        cnt[s] = m
    return top


@njit(cache=True)
def _repack(
    start: IntArray, cnt: IntArray, cap: IntArray, pool: FloatArray, size: int
) -> tuple[FloatArray, int]:  # pragma: no cover - compiled
    out = np.zeros((size, pool.shape[1]))
    top = 0
    for s in range(start.shape[0]):
        m = cnt[s]
        if cap[s] == 0:
            continue
        room = max(4, 2 * m)
        for t in range(m):
            for c in range(pool.shape[1]):
                out[top + t, c] = pool[start[s] + t, c]
        start[s] = top
        cap[s] = room
        top += room
    return out, top


@njit(cache=True)
def merge_post(
    pre_off: IntArray, pre: FloatArray, code: IntArray, counted: IntArray, batch: FloatArray
) -> tuple[IntArray, FloatArray]:  # pragma: no cover - compiled
    """Each value's records after the batch: its pre-batch records, then the batch's counted
    records of that value in event order (7 columns)."""
    k = pre_off.shape[0] - 1
    add = np.zeros(k, np.int64)
    for i in range(code.shape[0]):
        if counted[i] and code[i] >= 0:
            add[code[i]] += 1
    off = np.zeros(k + 1, np.int64)
    for j in range(k):
        off[j + 1] = off[j] + pre_off[j + 1] - pre_off[j] + add[j]
    out = np.empty((off[k], 7))
    fill = np.zeros(k, np.int64)
    for j in range(k):
        a = pre_off[j]
        m = pre_off[j + 1] - a
        for t in range(m):
            for c in range(7):
                out[off[j] + t, c] = pre[a + t, c]
        fill[j] = off[j] + m
    for i in range(code.shape[0]):
        j = code[i]
        if counted[i] and j >= 0:
            for c in range(7):
                out[fill[j], c] = batch[i, c]
            fill[j] += 1
    return off, out


def warm_up() -> None:
    """Compile (or load from the on-disk cache) the cache's kernels."""
    cache = KindCache(2, 1000)
    slots = np.array([0, 1], dtype=np.int64)
    cols = np.array([0, 1], dtype=np.int64)
    full_rec = np.zeros((1, 7))
    off, pre = cache.gather(
        slots, np.array([1, 0], dtype=np.int64), np.array([0, 1], dtype=np.int64), full_rec, cols
    )
    post_off, post = merge_post(
        off, pre, np.array([0, 1], dtype=np.int64), np.ones(2, np.int64), np.zeros((2, 7))
    )
    cache.store(slots, post_off, post, cols, 0)
    cache._repack(0, 0)  # noqa: SLF001 (compile it too)
