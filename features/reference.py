"""Offline reference implementation of the feature semantics, over a whole stream at once.

Plain numpy/pandas, no Redis, no Numba, no code shared with the online store except the spec
declarations. Semantics (as documented in :mod:`features.spec` and :mod:`features.kernels`): for
event ``i`` of the stream (arrival order) and feature ``f`` with resolution ``r``, ``N`` buckets
and delay ``d``, the window is ``[(B - N + 1) r, (B + 1) r)`` with ``B = floor((t_i - d) / r)``; it
aggregates the first deliveries ``j <= i`` (arrival order) of the same entity value that pass
the filter. Label features count the fraud labels of those transactions whose label time is
``<= t_i`` (labels are given with the transaction they label). Account events count for ``i``
when they were applied before ``i`` (``applied_before`` = index of the first transaction they
precede). Streams must be time-ordered per entity value (no late events), which is what replay
and the simulator produce; disorder falls back to a slow quadratic scan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from features._types import BoolArray, FloatArray, IntArray
from features.spec import DEFAULT_SPEC, FeatureSpec, validate_spec


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
        allowed = f.filter.values
        ok &= np.array([False] * n if col is None else [str(v) in allowed for v in col], bool)
    if f.agg == "distinct":
        col = cols.get(f.field)
        ok &= np.array([False] * n if col is None else [bool(v) for v in col], bool)
    return ok


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
            v = q_amt[i] / (s / c) if c and s != 0 else np.nan
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
        ok = new & _passes(f, entities, n)
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
    return out
