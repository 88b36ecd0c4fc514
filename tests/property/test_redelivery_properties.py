"""Redelivery at the store's own entry points, as the pipeline and replays drive them.

Hypothesis builds event streams, redelivers events (adjacent, in the same batch, across batch
boundaries, delayed up to and beyond the allowed lateness, several times), reorders them within
the lateness, cuts them into batches and sends them the way a replay does: batch k+1 submitted
before batch k is read (two in flight, one connection), labels submitted in between, duplicated.
The store is set up so that compactions are due after almost every batch (two buckets, no
minimum size) and streams span up to ten days (records leave the fine tiers, so buckets are
rewritten: about 45 compare-and-set rewrites in a 200-event, 10-day stream cut in 28 batches),
which is where a copy of a bucket and the batches in flight must agree.

It asserts, against the offline reference (:mod:`features.reference`) and one ordered pass over
the same events (default store settings, one batch at a time):

* every first delivery gets the offline reference's values over the same arrival order;
* ``store.redelivered`` marks exactly the deliveries whose id an earlier batch carried;
* the final state (a probe after the stream: one event per card and merchant, after the same
  labels, each label delivered twice) is the same: nothing counted twice, labels included.

The store tests in ``test_features_properties`` send one batch at a time with the default
compaction thresholds, so a small stream rarely compacts and never has a batch in flight: this
file covers that interplay.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import numpy as np
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.reference import reference_features
from features.store import RedisFeatureStore
from tests.property.test_features_properties import (
    LATENESS_S,
    SPEC,
    Stream,
    probe_at,
    run,
    stream_strategy,
)
from tests.unit.test_features_kernels import assert_features_equal

pytestmark = pytest.mark.integration


def store_on(url: str, prefix: str | None = None, **options: float) -> RedisFeatureStore:
    return RedisFeatureStore(
        redis.Redis.from_url(url),
        SPEC,
        allowed_lateness_seconds=LATENESS_S,
        prefix=prefix or f"r{uuid.uuid4().hex[:12]}:",
        **options,  # type: ignore[arg-type]
    )


Labels = tuple[list[str], np.ndarray, list[bool]]


def labels_of(s: Stream, seed: int) -> Labels:
    """Labels of 30 % of the events, known just after the stream ends (so that no event of the
    stream can see them, wherever in the stream they are delivered, and the probe sees all)."""
    rng = np.random.default_rng(seed + 1)
    uniq = sorted(set(s.ids))
    lab = [e for e in uniq if rng.random() < 0.3]
    t_label = int(s.ts.max()) + 1
    return lab, np.full(len(lab), t_label, dtype=np.int64), [rng.random() < 0.5 for _ in lab]


def probe(store: RedisFeatureStore, s: Stream) -> np.ndarray:
    """One fresh event per card and per merchant, just after the labels' time."""
    return probe_at(store, s, int(s.ts.max()) + 1)


def pipelined(
    store: RedisFeatureStore, s: Stream, cuts: Sequence[int], labels: Labels, labels_after: int
) -> tuple[np.ndarray, np.ndarray]:
    """Batches with the next one in flight (as replays send them); labels (twice: a redelivered
    label batch) submitted behind batch ``labels_after`` (those of events not delivered yet are
    unknown then, and not remembered). Returns the values and the redelivered flags."""
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(s.ids)}), len(s.ids)]
    values: list[np.ndarray] = []
    flags: list[np.ndarray] = []
    pending = None
    for b, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        sent = store.submit_batch(
            s.ids[lo:hi], s.ts[lo:hi], s.amount[lo:hi], {k: v[lo:hi] for k, v in s.ents.items()}
        )
        if pending is not None:
            values.append(pending.result())
            flags.append(store.redelivered.copy())
        pending = sent
        if b == labels_after:
            for _ in range(2):
                store.submit_labels(*labels)
    if pending is not None:
        values.append(pending.result())
        flags.append(store.redelivered.copy())
    return np.vstack(values), np.concatenate(flags)


# 10 days: records leave the fine tiers, buckets are rewritten
streams = stream_strategy([1, 48, 240])
#: where a copy goes: right after its original, a few rows on, or many rows on (in event time:
#: from "within the lateness" to far beyond it in a 48-hour stream)
delays = st.one_of(st.just(0), st.integers(1, 8), st.integers(9, 400))


@settings(
    max_examples=150,  # 1,500 ran clean (2.5 min); 150 keep make test short
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(streams, st.data())
def test_redelivered_events_count_once_with_batches_in_flight_and_compactions(
    url: str, drawn: tuple[int, Stream], data: st.DataObject
) -> None:
    seed, s = drawn
    n = len(s.ids)
    ref = store_on(url)
    run(ref, s, list(range(100, n, 100)))
    labels = labels_of(s, seed)
    ref.apply_labels_batch(*labels)
    want_probe = probe(ref, s)

    # arrival order: reordered within the lateness, then copies inserted (each up to 3 times)
    lag = data.draw(st.lists(st.integers(0, LATENESS_S * 1000), min_size=n, max_size=n))
    order = sorted(range(n), key=lambda i: (int(s.ts[i]) + lag[i], i))
    copies = data.draw(
        st.lists(st.tuples(st.integers(0, n - 1), st.integers(1, 3), delays), max_size=40)
    )
    for j, times, delay in copies:
        for _ in range(times):
            pos = order.index(j) + 1 + delay
            order.insert(min(pos, len(order)), j)
    cuts = data.draw(st.lists(st.integers(1, max(len(order) - 1, 1)), max_size=12))
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(order)}), len(order)]
    labels_after = data.draw(st.integers(0, len(bounds) - 2))

    store = store_on(url, buckets=2, compact_min_bytes=0, compact_growth=0.01)
    got, redelivered = pipelined(store, s.take(order), cuts, labels, labels_after)

    # first deliveries: the offline reference's values over the same arrival order (none is too
    # late by construction)
    assert store.late_events == 0
    arrived = s.take(order)
    want = reference_features(arrived.ids, arrived.ts, arrived.amount, arrived.ents, SPEC)
    first = {}
    for pos, i in enumerate(order):
        first.setdefault(i, pos)
    at = sorted(first.values())
    assert_features_equal(got[at], want[at], store.feature_names)
    # redelivered: exactly the deliveries whose id an earlier batch carried
    batch_of = np.searchsorted(bounds, np.arange(len(order)), side="right") - 1
    first_batch = {i: int(batch_of[p]) for i, p in first.items()}
    expected = np.array(
        [int(batch_of[p]) > first_batch[i] and p == _first_in_batch(order, bounds, p)
         for p, i in enumerate(order)]
    )  # fmt: skip
    assert np.array_equal(redelivered, expected)
    # the final state, labels delivered twice included
    store.apply_labels_batch(*labels)
    assert_features_equal(probe(store, s), want_probe, store.feature_names)


def _first_in_batch(order: Sequence[int], bounds: Sequence[int], p: int) -> int:
    """Position of the first delivery of ``order[p]`` within ``p``'s batch."""
    b = int(np.searchsorted(bounds, p, side="right")) - 1
    lo = bounds[b]
    return lo + list(order[lo : bounds[b + 1]]).index(order[p])
