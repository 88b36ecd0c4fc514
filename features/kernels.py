"""Numba kernels: windowed aggregates for a whole batch, and compaction of stored records.

Semantics (shared with :mod:`features.reference`; resolutions in :mod:`features.spec`):

* Records: each counted event adds one record to each kind (entity [+ filter] [+ distinct field])
  it belongs to: ``t`` (ms), ``c`` = 1, ``s`` = amount, ``q`` = amount², ``mn`` = ``mx`` = amount,
  ``h`` = hash of the distinct field's value (or, for label records, the label's time).
* Window of feature ``f`` for an event at ``t``: records with
  ``(B - N + 1) * r <= t_rec < (B + 1) * r`` where ``r`` is the resolution (ms),
  ``N = window / resolution`` and ``B = floor((t - delay) / r)``.
* The value for event ``i`` aggregates the records of every counted event ``j`` of the same entity
  value that arrived **before or with** ``i`` (the pre-batch state plus earlier events of the
  batch plus ``i`` itself when counted). A redelivered event is not counted again, so values do
  not depend on how the stream is cut into batches.
* A redelivery (an event an earlier batch counted) gets the value of its first delivery, as far
  as the stored records tell it: those with ``t_rec <= t`` (its own once), none of the batch's.
  For a stream in time order that is exactly the first delivery's value; so is the decision a
  worker that crashed after counting a batch makes when the batch comes again.
* ``time_since_last`` uses the records other than ``i``'s own with ``t_rec <= t`` in the window.
* Label records (kind source ``labels``) are counted by ``fraud_count`` when in the window and
  their label time ``h <= t``.

Records older than every window may be merged into buckets of the resolutions that are still
needed (``compact_values``), keeping the largest ``t``: bucket membership and "latest time" are
unchanged, so every value stays exact for every event that may still be counted (not too late,
see :mod:`features.store`).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from features._types import FloatArray, IntArray

AGG_CODES = {
    "count": 0,
    "sum": 1,
    "mean": 2,
    "std": 3,
    "min": 4,
    "max": 5,
    "distinct": 6,
    "time_since_last": 7,
    "ratio": 8,
    "fraud_count": 9,
}
# column positions in a kernel record matrix (always 7 wide; stored kinds keep a subset)
T, C, S, Q, MN, MX, HH = 0, 1, 2, 3, 4, 5, 6


@njit(cache=True)
def compute_kind(
    code: IntArray,
    counted: IntArray,
    again: IntArray,
    ts: IntArray,
    amount: FloatArray,
    batch_rec: FloatArray,
    pre_start: IntArray,
    pre_cnt: IntArray,
    pre_rec: FloatArray,
    pre_cols: IntArray,
    agg: IntArray,
    res_ms: IntArray,
    nb: IntArray,
    delay_ms: IntArray,
    outcol: IntArray,
    out: FloatArray,
) -> None:  # pragma: no cover - compiled
    """Fill ``out[:, outcol[f]]`` for the features ``f`` of one kind.

    code[i]: entity value number 0..K-1 (-1 missing -> NaN); counted[i]: 1 if event i adds its
    record ``batch_rec[i]`` (7 columns) to this kind; again[i]: 1 if event i is a redelivery
    whose first delivery an earlier batch counted: its value is the one at that first delivery,
    for a stream in time order (stored records with ``t_rec <= t``, its own included once, none
    of this batch's). Value k's stored records are read where
    they are kept (no copy per batch): ``pre_rec[pre_start[k] : pre_start[k] + pre_cnt[k]]``,
    column ``c`` being the record column ``pre_cols[c]``. The other columns are not read: a kind
    stores what its features use.
    """
    n = code.shape[0]
    nf = agg.shape[0]
    summable = False  # count, sum, mean and ratio add up: running totals answer them
    for f in range(nf):
        if agg[f] == 0 or agg[f] == 1 or agg[f] == 2 or agg[f] == 8:
            summable = True
    order = np.argsort(code, kind="mergesort")
    # scratch space for the largest value, reused (an allocation per value costs more than the
    # arithmetic of a small one)
    per_value = pre_cnt.copy()
    for i in range(n):
        if code[i] >= 0:
            per_value[code[i]] += 1
    most = per_value.max() if per_value.shape[0] else 0
    buf = np.zeros((most, 7))
    pt = np.empty(most)
    pc = np.zeros(most + 1)
    ps = np.zeros(most + 1)
    hs = np.empty(most)
    # the batch's own records of the value, with running totals while they come in time order
    ot = np.empty(most)
    oc = np.zeros(most + 1)
    osum = np.zeros(most + 1)
    p = 0
    while p < n:
        k = code[order[p]]
        q = p + 1
        while q < n and code[order[q]] == k:
            q += 1
        if k < 0:
            for r in range(p, q):
                for f in range(nf):
                    out[order[r], outcol[f]] = np.nan
            p = q
            continue
        a = pre_start[k]
        m0 = pre_cnt[k]
        rec = buf
        w = pre_cols.shape[0]
        for t in range(m0):  # only the stored columns: the kind's features read no others
            for col in range(w):
                rec[t, pre_cols[col]] = pre_rec[a + t, col]
        m = m0
        if summable:  # stored records by time, with running totals: a window is two searches
            ordered = True
            for x in range(1, m0):
                if rec[x, T] < rec[x - 1, T]:
                    ordered = False
                    break
            if ordered:
                for x in range(m0):
                    pt[x] = rec[x, T]
                    pc[x + 1] = pc[x] + rec[x, C]
                    ps[x + 1] = ps[x] + rec[x, S]
            else:
                srt = np.argsort(rec[:m0, T])
                for x in range(m0):
                    y = srt[x]
                    pt[x] = rec[y, T]
                    pc[x + 1] = pc[x] + rec[y, C]
                    ps[x + 1] = ps[x] + rec[y, S]
        no = 0
        own_sorted = True
        for r in range(p, q):
            i = order[r]
            ti = ts[i]
            rep = again[i] == 1
            upto = m0 if rep else m  # a redelivery sees none of this batch's records
            own = -1
            if counted[i]:
                for col in range(7):
                    rec[m, col] = batch_rec[i, col]
                own = m
                m += 1
                tr = batch_rec[i, T]
                if no > 0 and tr < ot[no - 1]:
                    own_sorted = False
                ot[no] = tr
                oc[no + 1] = oc[no] + batch_rec[i, C]
                osum[no + 1] = osum[no] + batch_rec[i, S]
                no += 1
            if not rep:
                upto = m
            for f in range(nf):
                rr = res_ms[f]
                b = (ti - delay_ms[f]) // rr
                lo = (b - nb[f] + 1) * rr
                hi = (b + 1) * rr
                if rep and hi > ti + 1:  # later records arrived after its first delivery
                    hi = ti + 1
                g = agg[f]
                if g == 7:
                    best = -1.0
                    found = False
                    skip_own = rep  # its first delivery's record is stored: not an "other"
                    for t in range(upto):
                        if t == own:
                            continue
                        tr = rec[t, T]
                        if skip_own and tr == ti:
                            skip_own = False
                            continue
                        if tr >= lo and tr < hi and tr <= ti:
                            if not found or tr > best:
                                best = tr
                                found = True
                    out[i, outcol[f]] = (ti - best) / 1000.0 if found else np.nan
                    continue
                if g == 6:
                    nh = 0
                    for t in range(upto):
                        tr = rec[t, T]
                        if tr >= lo and tr < hi:
                            hs[nh] = rec[t, HH]
                            nh += 1
                    if nh == 0:
                        out[i, outcol[f]] = 0.0
                    else:
                        srt = np.sort(hs[:nh])
                        d = 1
                        for t in range(1, nh):
                            if srt[t] != srt[t - 1]:
                                d += 1
                        out[i, outcol[f]] = float(d)
                    continue
                c = 0.0
                s = 0.0
                sq = 0.0
                mn = np.inf
                mx = -np.inf
                first = 0
                if summable and (g == 0 or g == 1 or g == 2 or g == 8):
                    x0 = np.searchsorted(pt[:m0], lo, side="left")
                    x1 = np.searchsorted(pt[:m0], hi, side="left")
                    c = pc[x1] - pc[x0]
                    s = ps[x1] - ps[x0]
                    first = m0  # the batch's own records: searched too while in time order
                    if own_sorted and not rep:
                        y0 = np.searchsorted(ot[:no], lo, side="left")
                        y1 = np.searchsorted(ot[:no], hi, side="left")
                        c += oc[y1] - oc[y0]
                        s += osum[y1] - osum[y0]
                        first = m
                for t in range(first, upto):
                    tr = rec[t, T]
                    if tr >= lo and tr < hi:
                        if g == 9:
                            if rec[t, HH] <= ti:
                                c += 1.0  # one label per record
                            continue
                        c += rec[t, C]
                        s += rec[t, S]
                        sq += rec[t, Q]
                        if rec[t, MN] < mn:
                            mn = rec[t, MN]
                        if rec[t, MX] > mx:
                            mx = rec[t, MX]
                if g == 0 or g == 9:
                    v = c
                elif g == 1:
                    v = s
                elif g == 2:
                    v = s / c if c > 0.0 else 0.0
                elif g == 3:
                    if c > 0.0:
                        mu = s / c
                        var = sq / c - mu * mu
                        v = np.sqrt(var) if var > 0.0 else 0.0
                    else:
                        v = 0.0
                elif g == 4:
                    v = mn if c > 0.0 else np.nan
                elif g == 5:
                    v = mx if c > 0.0 else np.nan
                else:  # ratio
                    mean = s / c if c > 0.0 else 0.0
                    # a denormal sum over several events underflows to a zero mean (fuzz run)
                    v = amount[i] / mean if mean != 0.0 else np.nan
                out[i, outcol[f]] = v
        p = q


@njit(cache=True)
def compact_values(
    off: IntArray,
    rec: FloatArray,
    now_ms: IntArray,
    lateness_ms: int,
    keep_ms: int,
    tier_age: IntArray,
    tier_res: IntArray,
    by_hash: bool,
    mergeable: bool,
) -> tuple[IntArray, FloatArray]:  # pragma: no cover - compiled
    """Drop records older than ``keep_ms`` and merge the others; value ``j``'s ages are taken
    relative to its own reference time ``now_ms[j]``.

    Every event that may still be counted for value ``j`` has ``t >= now_ms[j] - lateness_ms``;
    ages are therefore measured from that earliest time (``age - lateness``): a record is merged
    into buckets of ``tier_res[z]`` for the last ``z`` with ``tier_age[z] <= age - lateness``, once
    ``age - lateness >= tier_res[z]`` (0 = keep raw), so that every feature that can still see it
    (reach >= tier age) has a resolution that is a multiple of the bucket and every merged record
    is older than any such event. Records merge when they share tier and bucket (a merged
    record keeps the largest ``t``, so its tier is its members'). ``keep_ms`` includes the
    lateness. With ``by_hash`` records merge only with equal ``h``. Returns the new offsets and
    records, each value's in time order.
    """
    k = off.shape[0] - 1
    nz = tier_age.shape[0]
    new_off = np.zeros(k + 1, np.int64)
    out = np.empty_like(rec)
    w = 0
    for j in range(k):
        a = off[j]
        m = off[j + 1] - a
        now = now_ms[j]
        tier = np.full(m, -1, np.int64)  # -1 dropped, 0 raw, z + 1 merged at tier_res[z]
        for t in range(m):
            age = now - rec[a + t, T]
            if age > keep_ms:
                continue
            tier[t] = 0
            if mergeable:
                eff = age - lateness_ms
                zz = -1
                for z in range(nz):
                    if tier_age[z] <= eff:
                        zz = z
                if zz >= 0 and tier_res[zz] > 0 and eff >= tier_res[zz]:
                    tier[t] = zz + 1
        for t in range(m):
            if tier[t] == 0:
                for col in range(7):
                    out[w, col] = rec[a + t, col]
                w += 1
        for z in range(nz):
            idx = np.flatnonzero(tier == z + 1)
            if idx.shape[0] == 0:
                continue
            res = tier_res[z]
            bkt = np.empty(idx.shape[0])
            for x in range(idx.shape[0]):
                bkt[x] = rec[a + idx[x], T] // res
            if by_hash:  # by hash, then (stable) by bucket: equal (bucket, hash) are adjacent
                hv = np.empty(idx.shape[0])
                for x in range(idx.shape[0]):
                    hv[x] = rec[a + idx[x], HH]
                o1 = np.argsort(hv, kind="mergesort")
                o2 = np.argsort(bkt[o1], kind="mergesort")
                order = o1[o2]
            else:
                order = np.argsort(bkt, kind="mergesort")
            u = -1
            for x in range(order.shape[0]):
                r = a + idx[order[x]]
                b = bkt[order[x]]
                if u >= 0 and out[u, T] // res == b and (not by_hash or out[u, HH] == rec[r, HH]):
                    out[u, C] += rec[r, C]
                    out[u, S] += rec[r, S]
                    out[u, Q] += rec[r, Q]
                    out[u, MN] = min(out[u, MN], rec[r, MN])
                    out[u, MX] = max(out[u, MX], rec[r, MX])
                    out[u, T] = max(out[u, T], rec[r, T])
                else:
                    for col in range(7):
                        out[w, col] = rec[r, col]
                    u = w
                    w += 1
        # in time order: the window kernel then answers sums with running totals, no sort
        o = new_off[j]
        if w - o > 1:
            srt = np.argsort(out[o:w, T], kind="mergesort")
            tmp = out[o:w].copy()
            for x in range(w - o):
                for col in range(7):
                    out[o + x, col] = tmp[srt[x], col]
        new_off[j + 1] = w
    return new_off, out[:w]


def compact(
    off: IntArray,
    rec: FloatArray,
    now_ms: int,
    lateness_ms: int,
    keep_ms: int,
    tier_age: IntArray,
    tier_res: IntArray,
    by_hash: bool,
    mergeable: bool,
) -> tuple[IntArray, FloatArray]:
    """:func:`compact_values` with one reference time for every value."""
    now = np.full(off.shape[0] - 1, now_ms, dtype=np.int64)
    return compact_values(
        off, rec, now, lateness_ms, keep_ms, tier_age, tier_res, by_hash, mergeable
    )


def warm_up() -> None:
    """Compile (or load from the on-disk cache) every kernel for the dtypes the store uses."""
    out = np.zeros((2, 10))
    rec = np.zeros((2, 7))
    rec[:, T] = [1000.0, 2000.0]
    rec[:, C] = 1.0
    compute_kind(
        np.array([0, -1], dtype=np.int64),
        np.array([1, 0], dtype=np.int64),
        np.array([0, 0], dtype=np.int64),
        np.array([3000, 3000], dtype=np.int64),
        np.array([1.0, 2.0]),
        rec.copy(),
        np.array([0], dtype=np.int64),
        np.array([2], dtype=np.int64),
        rec,
        np.arange(7, dtype=np.int64),
        np.arange(10, dtype=np.int64),
        np.full(10, 60_000, dtype=np.int64),
        np.full(10, 60, dtype=np.int64),
        np.zeros(10, dtype=np.int64),
        np.arange(10, dtype=np.int64),
        out,
    )
    compact_values(
        np.array([0, 2], dtype=np.int64),
        rec,
        np.array([10_000_000], dtype=np.int64),
        1000,
        20_000_000,
        np.array([0], dtype=np.int64),
        np.array([60_000], dtype=np.int64),
        False,
        True,
    )
