"""Numba kernels: windowed aggregates for a whole batch, and parsing of the script's reply.

Semantics (shared with :mod:`features.reference`; resolutions are in :mod:`features.spec`):

* Time is cut into epoch-aligned buckets of ``resolution`` seconds:
  ``bucket(t) = floor(ts_ms / (1000 * resolution))``. A window of ``N = window / resolution``
  buckets for an event at ``t`` covers buckets ``[bucket(t) - N + 1, bucket(t)]``; the window start
  is thus rounded down to the bucket resolution (it holds between ``window - resolution`` and
  ``window`` seconds of history).
* The value for event ``i`` aggregates every *counted* event ``j`` of the same entity value whose
  bucket lies in that range and that came **before or at** ``i`` in stream order: the pre-batch
  state read from Redis (all earlier batches), plus the new events earlier in this batch
  (``j < i``), plus ``i`` itself when it is new. A redelivered event (its ``event_id`` was already
  seen) is not counted again: its earlier delivery is already in the state. The value therefore
  does not depend on how the stream is cut into batches.
* An event is *counted* when it is new and not "too late": its bucket is not older than the
  store's allowed lateness relative to the newest bucket already stored for that entity value
  (the ``floor`` returned by the script). Events in bucket order are never too late.
* ``count`` is the number of events, ``sum`` the sum of ``amount``, ``mean`` = sum / count
  (0.0 when count is 0). An event whose entity value is missing gets NaN for that entity's features.

Note that the window is defined on event time, while "before" is stream order: for an
out-of-order stream, an event is not seen by an earlier-arriving event with a later timestamp
(the value never includes the future), but a late event sees every earlier-arriving event in its
buckets, including ones with a slightly later timestamp in its own bucket.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from features._types import BoolArray, FloatArray, IntArray, UInt8Array


@njit(cache=True)
def aggregate_group(
    key: IntArray,
    bucket: IntArray,
    amount: FloatArray,
    counted: BoolArray,
    pre_offsets: IntArray,
    pre_bucket: IntArray,
    pre_count: FloatArray,
    pre_sum: FloatArray,
    windows: IntArray,
    col_count: IntArray,
    col_sum: IntArray,
    col_mean: IntArray,
    out: FloatArray,
) -> None:  # pragma: no cover - compiled
    """Fill ``out[:, col_*[w]]`` for one group (entity, resolution) of features.

    key[i]: the event's entity value number in ``0..K-1`` (-1: missing -> NaN);
    bucket[i]: its bucket; counted[i]: whether it adds to the state (new and not too late);
    pre_offsets (K+1): entries ``pre_offsets[k]:pre_offsets[k+1]`` are value k's pre-batch buckets
    (bucket, count, sum); windows: distinct window lengths in buckets, ascending;
    col_count/col_sum/col_mean[w]: output column of window w's aggregate, -1 if not requested.
    """
    n = key.shape[0]
    nw = windows.shape[0]
    order = np.argsort(key, kind="mergesort")  # stable: batch order within each value
    p = 0
    while p < n:
        k = key[order[p]]
        q = p + 1
        while q < n and key[order[q]] == k:
            q += 1
        if k < 0:
            for r in range(p, q):
                i = order[r]
                for w in range(nw):
                    if col_count[w] >= 0:
                        out[i, col_count[w]] = np.nan
                    if col_sum[w] >= 0:
                        out[i, col_sum[w]] = np.nan
                    if col_mean[w] >= 0:
                        out[i, col_mean[w]] = np.nan
            p = q
            continue
        a = pre_offsets[k]
        e = pre_offsets[k + 1]
        allb = np.empty((e - a) + (q - p), np.int64)
        for t in range(a, e):
            allb[t - a] = pre_bucket[t]
        for r in range(p, q):
            allb[e - a + r - p] = bucket[order[r]]
        coords = np.unique(allb)  # sorted distinct buckets of this value
        dc = np.zeros(coords.shape[0])
        ds = np.zeros(coords.shape[0])
        for t in range(a, e):
            j = np.searchsorted(coords, pre_bucket[t])
            dc[j] += pre_count[t]
            ds[j] += pre_sum[t]
        for r in range(p, q):
            i = order[r]
            bi = bucket[i]
            j = np.searchsorted(coords, bi)
            if counted[i]:
                dc[j] += 1.0
                ds[j] += amount[i]
            c = 0.0
            s = 0.0
            w = 0
            lo = bi - windows[0] + 1
            while w < nw:
                if j >= 0 and coords[j] >= lo:
                    c += dc[j]
                    s += ds[j]
                    j -= 1
                    continue
                if col_count[w] >= 0:
                    out[i, col_count[w]] = c
                if col_sum[w] >= 0:
                    out[i, col_sum[w]] = s
                if col_mean[w] >= 0:
                    out[i, col_mean[w]] = s / c if c > 0.0 else 0.0
                w += 1
                if w < nw:
                    lo = bi - windows[w] + 1
        p = q


_MALFORMED = "malformed number in feature script reply"


@njit(cache=True)
def parse_numbers(buf: UInt8Array) -> FloatArray:  # pragma: no cover - compiled
    """Whitespace-separated decimal numbers (``-12``, ``3.25``, ``1e-05``) from ASCII bytes.

    Integers up to 18 digits are exact; other values are within about one ulp of the correctly
    rounded result (enough for sums that Redis keeps as long double strings).
    """
    n = buf.shape[0]
    out = np.empty(n // 2 + 1, np.float64)
    m = 0
    i = 0
    while i < n:
        ch = buf[i]
        if ch == 32 or ch == 10 or ch == 9 or ch == 13:
            i += 1
            continue
        neg = False
        if ch == 45:
            neg = True
            i += 1
        elif ch == 43:
            i += 1
        mant = 0
        nd = 0
        exp10 = 0
        digits = 0
        while i < n and 48 <= buf[i] <= 57:
            d = buf[i] - 48
            digits += 1
            if nd < 18:
                mant = mant * 10 + d
                if mant > 0:
                    nd += 1
            else:
                exp10 += 1
            i += 1
        if i < n and buf[i] == 46:
            i += 1
            while i < n and 48 <= buf[i] <= 57:
                d = buf[i] - 48
                digits += 1
                if nd < 18:
                    mant = mant * 10 + d
                    exp10 -= 1
                    if mant > 0:
                        nd += 1
                i += 1
        if digits == 0:
            raise ValueError(_MALFORMED)
        if i < n and (buf[i] == 101 or buf[i] == 69):
            i += 1
            eneg = False
            if i < n and buf[i] == 45:
                eneg = True
                i += 1
            elif i < n and buf[i] == 43:
                i += 1
            e = 0
            while i < n and 48 <= buf[i] <= 57:
                e = e * 10 + (buf[i] - 48)
                i += 1
            exp10 += -e if eneg else e
        v = float(mant)
        if exp10 > 0:
            v *= 10.0**exp10
        elif exp10 < 0:
            v /= 10.0 ** (-exp10)
        out[m] = -v if neg else v
        m += 1
        if i < n and not (buf[i] == 32 or buf[i] == 10 or buf[i] == 9 or buf[i] == 13):
            raise ValueError(_MALFORMED)
    return out[:m]


def warm_up() -> None:
    """Compile (or load from the on-disk cache) every kernel for the dtypes the store uses."""
    parse_numbers(np.frombuffer(b"1 -2.5 3e-2", dtype=np.uint8))
    out = np.zeros((3, 3))
    aggregate_group(
        np.array([0, -1, 0], dtype=np.int64),
        np.array([10, 10, 11], dtype=np.int64),
        np.array([1.0, 2.0, 3.0]),
        np.array([True, True, False]),
        np.array([0, 1], dtype=np.int64),
        np.array([9], dtype=np.int64),
        np.array([1.0]),
        np.array([5.0]),
        np.array([2], dtype=np.int64),
        np.array([0], dtype=np.int64),
        np.array([1], dtype=np.int64),
        np.array([2], dtype=np.int64),
        out,
    )
