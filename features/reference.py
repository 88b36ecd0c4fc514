"""Offline reference implementation of the feature semantics, over a whole stream at once.

numpy/pandas plus one small Numba kernel of its own (:func:`_windows`); no Redis and no code
shared with the online store except the spec declarations. Semantics (as documented in
:mod:`features.spec` and :mod:`features.kernels`): for event ``i`` of the stream (arrival order)
and feature ``f`` with resolution ``r``, ``N`` buckets and delay ``d``, the window is
``[(B - N + 1) r, (B + 1) r)`` with ``B = floor((t_i - d) / r)``; it aggregates the first
deliveries ``j <= i`` (arrival order) of the same entity value that pass the filter. A repeated
event id (a redelivery) gets the value of its first delivery. Label
features count the fraud labels of those transactions whose label time is ``<= t_i`` (labels are
given with the transaction they label). Account events count for ``i`` when they were applied
before ``i`` (``applied_before`` = index of the first transaction they precede).

Fast path: per entity value the records are kept in arrival order; when their times (and the
``applied_before`` indexes of account events) are non-decreasing in that order (true for replay
and the simulator: time-ordered streams, redeliveries included, as a redelivery adds no record),
the records event ``i`` may see are a prefix, and the ones in its window a contiguous slice found
by binary search, so a stream of 100,000+ events takes seconds. Otherwise (late events) it falls
back to a per-event quadratic scan (:func:`_one_scan`) with the same semantics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from numba import njit

from features._types import BoolArray, FloatArray, IntArray
from features.spec import AMOUNT_FIELD, DEFAULT_SPEC, FeatureSpec, validate_spec


def first_deliveries(event_ids: Sequence[Any]) -> BoolArray:
    """True for the first occurrence of every event id (stream order)."""
    ids = pd.Series([str(e) for e in event_ids], dtype=object)
    return np.asarray(~ids.duplicated(keep="first").to_numpy(), dtype=bool)


def _entity(entity: str, cols: Mapping[str, Sequence[Any]], n: int) -> list[str]:
    parts = []
    for p in entity.split("+"):
        col = cols.get(p)
        if col is None:
            return [""] * n
        parts.append(["" if v is None or v != v or v == "" else str(v) for v in col])
    return ["|".join(vs) if all(vs) else "" for vs in zip(*parts, strict=True)]


def _passes(f: FeatureSpec, cols: Mapping[str, Sequence[Any]], n: int) -> BoolArray:
    ok = np.ones(n, dtype=bool)
    if f.filter is not None:
        col = cols.get(f.filter.field)
        if f.filter.field == AMOUNT_FIELD:  # compared as numbers
            ok &= f.filter.mask(col, n)
        else:
            allowed = f.filter.values
            ok &= np.array([False] * n if col is None else [str(v) in allowed for v in col], bool)
    if f.agg == "distinct":
        col = cols.get(f.field)
        ok &= np.array([False] * n if col is None else [bool(v) for v in col], bool)
    return ok


_AGG = {
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


@njit(cache=True)
def _bisect(a: FloatArray, lo: int, hi: int, x: float, right: bool) -> int:  # pragma: no cover
    """First index in ``a[lo:hi]`` (sorted) whose value is > x (``right``) or >= x."""
    while lo < hi:
        mid = (lo + hi) // 2
        if a[mid] < x or (right and a[mid] == x):
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True)
def _windows(
    agg: int,
    q_code: IntArray,
    q_ts: IntArray,
    q_amt: FloatArray,
    lo: IntArray,
    hi: IntArray,
    g_off: IntArray,
    g_ts: FloatArray,
    g_avail: FloatArray,
    g_amt: FloatArray,
    g_val: IntArray,
    g_label: FloatArray,
    g_src: IntArray,
    same: bool,
) -> FloatArray:  # pragma: no cover - compiled
    """One feature for every query; the records of entity ``c`` are ``g_*[g_off[c]:g_off[c+1]]``
    in arrival order, with non-decreasing times and availability."""
    n = q_code.shape[0]
    out = np.full(n, np.nan)
    for i in range(n):
        c = q_code[i]
        if c < 0:
            continue
        s0 = g_off[c]
        e0 = g_off[c + 1]
        p = _bisect(g_avail, s0, e0, float(i), True)  # records available to event i
        a = _bisect(g_ts, s0, p, float(lo[i]), False)
        b = _bisect(g_ts, a, p, float(hi[i]), False)
        t = float(q_ts[i])
        if agg == 0:
            out[i] = float(b - a)
        elif agg == 7:
            u = _bisect(g_ts, a, b, t, True) - 1
            while u >= a and same and g_src[u] == i:
                u -= 1
            if u >= a:
                out[i] = (t - g_ts[u]) / 1000.0
        elif agg == 9:
            k = 0
            for j in range(a, b):
                if g_label[j] <= t:
                    k += 1
            out[i] = float(k)
        elif agg == 6:
            if b == a:
                out[i] = 0.0
            else:
                v = np.sort(g_val[a:b])
                d = 1
                for j in range(1, b - a):
                    if v[j] != v[j - 1]:
                        d += 1
                out[i] = float(d)
        else:
            cnt = float(b - a)
            sm = 0.0
            sq = 0.0
            mn = np.inf
            mx = -np.inf
            for j in range(a, b):
                x = g_amt[j]
                sm += x
                sq += x * x
                mn = min(mn, x)
                mx = max(mx, x)
            if agg == 1:
                out[i] = sm
            elif agg == 2:
                out[i] = sm / cnt if cnt > 0 else 0.0
            elif agg == 3:
                var = sq / cnt - (sm / cnt) ** 2 if cnt > 0 else 0.0
                out[i] = np.sqrt(var) if var > 0.0 else 0.0
            elif agg == 4:
                out[i] = mn if cnt > 0 else np.nan
            elif agg == 5:
                out[i] = mx if cnt > 0 else np.nan
            elif cnt > 0 and sm / cnt != 0.0:  # ratio (a denormal mean may underflow to 0)
                out[i] = q_amt[i] / (sm / cnt)
    return out


def _one(
    f: FeatureSpec,
    q_ts: IntArray,
    q_amt: FloatArray,
    q_ent: list[str],
    s_ts: IntArray,
    s_amt: FloatArray,
    s_ent: list[str],
    s_ok: BoolArray,
    s_avail: IntArray,
    s_val: list[Any],
    s_label: FloatArray,
    same: bool = True,
) -> FloatArray:
    """Feature ``f`` for queries q over the source stream s: the Numba fast path when the
    records of every entity value are time- and availability-ordered, else :func:`_one_scan`."""
    n = len(q_ts)
    codes, _ = pd.factorize(pd.Series([*q_ent, *s_ent], dtype=object))
    codes = np.asarray(codes, dtype=np.int64)
    empty = np.array([e == "" for e in [*q_ent, *s_ent]], dtype=bool)
    codes[empty] = -1
    q_code, s_code = codes[:n], codes[n:]
    sel = np.flatnonzero(s_ok & (s_code >= 0))
    order = sel[np.argsort(s_code[sel], kind="stable")]  # by entity, then arrival
    g_code = s_code[order]
    g_ts = s_ts[order].astype(np.float64)
    g_avail = s_avail[order].astype(np.float64)
    same_group = g_code[1:] == g_code[:-1]
    if np.any(same_group & (np.diff(g_ts) < 0)) or np.any(same_group & (np.diff(g_avail) < 0)):
        return _one_scan(
            f, q_ts, q_amt, q_ent, s_ts, s_amt, s_ent, s_ok, s_avail, s_val, s_label, same
        )
    k = int(codes.max()) + 1 if len(codes) else 0
    g_off = np.zeros(k + 1, dtype=np.int64)
    np.cumsum(np.bincount(g_code, minlength=k), out=g_off[1:])
    vals = pd.factorize(pd.Series([str(s_val[j]) for j in order.tolist()], dtype=object))[0]
    r = f.resolution_seconds * 1000
    b = (q_ts - f.label_delay_seconds * 1000) // r
    return _windows(
        _AGG[f.agg],
        q_code,
        np.asarray(q_ts, dtype=np.int64),
        np.asarray(q_amt, dtype=np.float64),
        (b - f.n_buckets + 1) * r,
        (b + 1) * r,
        g_off,
        g_ts,
        g_avail,
        np.asarray(s_amt, dtype=np.float64)[order],
        np.asarray(vals, dtype=np.int64),
        np.asarray(s_label, dtype=np.float64)[order],
        order.astype(np.int64),
        same,
    )


def _one_scan(
    f: FeatureSpec,
    q_ts: IntArray,
    q_amt: FloatArray,
    q_ent: list[str],
    s_ts: IntArray,
    s_amt: FloatArray,
    s_ent: list[str],
    s_ok: BoolArray,
    s_avail: IntArray,
    s_val: list[Any],
    s_label: FloatArray,
    same: bool = True,
) -> FloatArray:
    """Feature ``f`` for queries q over the source stream s (``s_avail[j]``: first query index
    that may see record j)."""
    n = len(q_ts)
    out = np.full(n, np.nan)
    r = f.resolution_seconds * 1000
    b = (q_ts - f.label_delay_seconds * 1000) // r
    lo = (b - f.n_buckets + 1) * r
    hi = (b + 1) * r
    by: dict[str, list[int]] = {}
    for j, e in enumerate(s_ent):
        if e and s_ok[j]:
            by.setdefault(e, []).append(j)
    groups = {e: np.array(v, dtype=np.int64) for e, v in by.items()}
    for i in range(n):
        e = q_ent[i]
        if not e:
            continue
        g = groups.get(e)
        if g is None:
            g = np.zeros(0, dtype=np.int64)
        sel = g[s_avail[g] <= i]
        t = s_ts[sel]
        w = sel[(t >= lo[i]) & (t < hi[i])]
        a = s_amt[w]
        c = float(len(w))
        if f.agg == "count":
            v = c
        elif f.agg == "sum":
            v = float(a.sum()) if c else 0.0
        elif f.agg == "mean":
            v = float(a.sum()) / c if c else 0.0
        elif f.agg == "std":
            var = float((a * a).sum()) / c - (float(a.sum()) / c) ** 2 if c else 0.0
            v = float(np.sqrt(var)) if var > 0.0 else 0.0
        elif f.agg == "min":
            v = float(a.min()) if c else np.nan
        elif f.agg == "max":
            v = float(a.max()) if c else np.nan
        elif f.agg == "distinct":
            v = float(len({s_val[j] for j in w.tolist()}))
        elif f.agg == "ratio":
            s = float(a.sum())
            v = q_amt[i] / (s / c) if c and s / c != 0 else np.nan
        elif f.agg == "time_since_last":
            prev = [s_ts[j] for j in w.tolist() if (not same or j != i) and s_ts[j] <= q_ts[i]]
            v = (q_ts[i] - max(prev)) / 1000.0 if prev else np.nan
        else:  # fraud_count over labelled records
            v = float(np.count_nonzero(s_label[w] <= q_ts[i]))
        out[i] = v
    return out


def reference_features(
    event_ids: Sequence[Any],
    ts_ms: Sequence[int] | IntArray,
    amounts: Sequence[float] | FloatArray,
    entities: Mapping[str, Sequence[Any]],
    spec: Sequence[FeatureSpec] = DEFAULT_SPEC,
    labels: Mapping[str, tuple[int, bool]] | None = None,
    account_events: Mapping[str, Sequence[Any]] | None = None,
) -> FloatArray:
    """The (n, len(spec)) feature matrix of a stream, columns in spec order.

    ``entities`` holds every transaction field the spec reads; ``labels`` maps event id ->
    (label time, is_fraud); ``account_events`` has columns ``ts``, ``type``, the fields, and
    ``applied_before``.
    """
    features = validate_spec(spec)
    n = len(event_ids)
    ts = np.asarray(ts_ms, dtype=np.int64)
    amt = np.asarray(amounts, dtype=np.float64)
    new = first_deliveries(event_ids)
    out = np.empty((n, len(features)))
    if n == 0:
        return out
    avail = np.arange(n, dtype=np.int64)
    ids = [str(e) for e in event_ids]
    label_ts = np.full(n, np.inf)
    fraud = np.zeros(n, dtype=bool)
    for i, e in enumerate(ids):
        if labels and e in labels and new[i]:
            lt, isf = labels[e]
            if isf:
                label_ts[i] = float(lt)
                fraud[i] = True
    acc = account_events or {}
    tx_cols = {**entities, AMOUNT_FIELD: amt.tolist()}  # amount filters compare numbers
    for col, f in enumerate(features):
        q_ent = _entity(f.entity, entities, n)
        if f.source == "events":
            m = len(acc.get("ts", []))
            a_ts = np.asarray(acc.get("ts", []), dtype=np.int64)
            a_first = first_deliveries(acc.get("event_id", [str(x) for x in range(m)]))
            ok = a_first & _passes(f, acc, m)
            vals = list(acc.get(f.field, [None] * m))
            out[:, col] = _one(
                f,
                ts,
                amt,
                q_ent,
                a_ts,
                np.zeros(m),
                _entity(f.entity, acc, m),
                ok,
                np.asarray(acc.get("applied_before", np.zeros(m)), dtype=np.int64),
                vals,
                np.full(m, np.inf),
                same=False,
            )
            continue
        ok = new & _passes(f, tx_cols, n)
        vals = list(entities.get(f.field, [None] * n))
        if f.agg in ("fraud_count", "fraud_rate"):
            g = FeatureSpec.of(
                f.entity,
                "fraud_count",
                f.window_seconds,
                f.resolution_seconds,
                label_delay_seconds=f.label_delay_seconds,
            )
            fc = _one(g, ts, amt, q_ent, ts, amt, q_ent, ok & fraud, avail, vals, label_ts)
            if f.agg == "fraud_count":
                out[:, col] = fc
                continue
            h = FeatureSpec.of(
                f.entity,
                "count",
                f.window_seconds,
                f.resolution_seconds,
                label_delay_seconds=f.label_delay_seconds,
            )
            cnt = _one(h, ts, amt, q_ent, ts, amt, q_ent, ok, avail, vals, label_ts)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[:, col] = np.where(cnt > 0, fc / np.where(cnt > 0, cnt, 1.0), 0.0)
            out[np.isnan(cnt), col] = np.nan
            continue
        out[:, col] = _one(f, ts, amt, q_ent, ts, amt, q_ent, ok, avail, vals, label_ts)
    # a repeated event id gets its first delivery's value
    first_row = pd.Series(np.arange(n)).groupby(pd.Series(ids)).transform("first")
    copied: FloatArray = out[first_row.to_numpy(dtype=np.int64)]
    return copied
