"""Offline reference implementation of the feature semantics, over a whole stream at once.

Plain numpy, no Redis, no Numba: the value of every feature for every event of a stream given in
stream (arrival) order, with exactly the semantics documented in :mod:`features.kernels`:
epoch-aligned buckets of the feature's resolution, the window of event ``i`` covers buckets
``[bucket(t_i) - N + 1, bucket(t_i)]`` and aggregates the first deliveries of the events ``j <= i``
(stream order) of the same entity value in that range. Redeliveries (an ``event_id`` seen before)
are scored but not counted again; a missing entity value gives NaN.

It does not model the store's allowed lateness: for streams whose disorder stays within the
store's ``allowed_lateness_seconds`` (in particular time-ordered streams), the store returns the
same values (up to float rounding of sums, which Redis keeps as decimal strings).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from features._types import BoolArray, FloatArray, IntArray
from features.spec import DEFAULT_SPEC, FeatureSpec, validate_spec


def first_deliveries(event_ids: Sequence[Any]) -> BoolArray:
    """True for the first occurrence of every event id (stream order)."""
    ids = np.asarray([str(e) for e in event_ids], dtype=object)
    new = np.zeros(len(ids), dtype=bool)
    if len(ids):
        _, first = np.unique(ids, return_index=True)
        new[first] = True
    return new


def _codes(values: Sequence[Any] | None, n: int) -> IntArray:
    if values is None:
        return np.full(n, -1, dtype=np.int64)
    index: dict[Any, int] = {}
    return np.array([index.setdefault(v, len(index)) if v else -1 for v in values], np.int64)


def _window(
    code: IntArray, bucket: IntArray, amount: FloatArray, new: BoolArray, n_buckets: int
) -> tuple[FloatArray, FloatArray]:
    """(count, sum) over counted events j <= i of the same code with bucket in the window."""
    n = len(code)
    cnt = np.full(n, np.nan)
    tot = np.full(n, np.nan)
    order = np.argsort(code, kind="stable")  # stream order within each code
    c_sorted = code[order]
    b_sorted = bucket[order]
    b_sorted = np.where(c_sorted < 0, b_sorted.min(), b_sorted)  # missing: values unused
    same = c_sorted[1:] == c_sorted[:-1]
    if np.all(b_sorted[1:][same] >= b_sorted[:-1][same]):
        # time-ordered within every entity value: a window is a contiguous run ending at i
        w_cnt = np.concatenate(([0.0], np.cumsum(new[order].astype(np.float64))))
        w_sum = np.concatenate(([0.0], np.cumsum(np.where(new[order], amount[order], 0.0))))
        span = int(b_sorted.max() - b_sorted.min()) + n_buckets + 1
        composite = c_sorted * span + (b_sorted - b_sorted.min())
        lo = c_sorted * span + np.maximum(b_sorted - b_sorted.min() - n_buckets + 1, -1)
        start = np.searchsorted(composite, lo, side="left")
        end = np.arange(1, n + 1)
        cnt[order] = w_cnt[end] - w_cnt[start]
        tot[order] = w_sum[end] - w_sum[start]
    else:
        for i in range(n):
            if code[i] < 0:
                continue
            mask = (code[: i + 1] == code[i]) & new[: i + 1]
            mask &= (bucket[: i + 1] <= bucket[i]) & (bucket[: i + 1] > bucket[i] - n_buckets)
            cnt[i] = mask.sum()
            tot[i] = amount[: i + 1][mask].sum()
    missing = code < 0
    cnt[missing] = np.nan
    tot[missing] = np.nan
    return cnt, tot


def reference_features(
    event_ids: Sequence[Any],
    ts_ms: Sequence[int] | IntArray,
    amounts: Sequence[float] | FloatArray,
    entities: Mapping[str, Sequence[Any]],
    spec: Sequence[FeatureSpec] = DEFAULT_SPEC,
) -> FloatArray:
    """The (n, len(spec)) feature matrix of a whole stream, columns in spec order."""
    features = validate_spec(spec)
    n = len(event_ids)
    ts = np.asarray(ts_ms, dtype=np.int64)
    amount = np.asarray(amounts, dtype=np.float64)
    new = first_deliveries(event_ids)
    out = np.empty((n, len(features)))
    if n == 0:
        return out
    codes: dict[str, IntArray] = {}
    cache: dict[tuple[str, int, int], tuple[FloatArray, FloatArray]] = {}
    for col, f in enumerate(features):
        if f.entity not in codes:
            codes[f.entity] = _codes(entities.get(f.entity), n)
        ck = (f.entity, f.resolution_seconds, f.n_buckets)
        if ck not in cache:
            bucket = ts // (f.resolution_seconds * 1000)
            cache[ck] = _window(codes[f.entity], bucket, amount, new, f.n_buckets)
        cnt, tot = cache[ck]
        if f.agg == "count":
            out[:, col] = cnt
        elif f.agg == "sum":
            out[:, col] = tot
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                out[:, col] = np.where(cnt > 0, tot / np.where(cnt > 0, cnt, 1.0), 0.0)
            out[np.isnan(cnt), col] = np.nan
    return out


def reference_frame(df: Any, spec: Sequence[FeatureSpec] = DEFAULT_SPEC) -> FloatArray:
    """:func:`reference_features` of a DataFrame (or mapping of columns) with ``event_id``,
    ``ts`` (epoch milliseconds), ``amount`` and the entity columns the spec uses."""
    features = validate_spec(spec)
    entities = {
        f.entity: [None if v is None or v != v else v for v in list(df[f.entity])]
        for f in features
        if f.entity in df
    }
    return reference_features(
        list(df["event_id"]),
        np.asarray(df["ts"], dtype=np.int64),
        np.asarray(df["amount"], dtype=np.float64),
        entities,
        features,
    )
