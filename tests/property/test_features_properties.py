"""Property tests of the feature store against a real Valkey (fixtures in tests/conftest.py).

The state after a stream is observed by *probing*: one batch with a fresh event per entity value
at the end of the stream, whose feature vectors cover every kind (card, merchant, customer,
device, ip, card x merchant, filters, distinct, labels). Each property compares that probe (and,
where the semantics say so, the per-event values) with one ordered pass over the same events:

* duplicates: redeliveries anywhere later in the stream (same or later batch) change nothing;
* reordering: any arrival order in which no event lags the latest one by more than the allowed
  lateness, cut into any batches, gives the same final state;
* concurrency: two workers (threads, own connections and stores) writing the same keys at once
  (both delivering the whole stream, or each delivering half of it) give the same final state.

Streams span up to two days so that client-planned compactions (compare-and-set on the server)
happen while other batches append.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.spec import DEFAULT_SPEC, FeatureSpec
from features.store import RedisFeatureStore
from tests.unit.test_features_kernels import T0, assert_features_equal

pytestmark = pytest.mark.integration

LATENESS_S = 600
#: The default spec plus label features without delay, so that labels show in the probe.
SPEC = (
    *DEFAULT_SPEC,
    FeatureSpec.of("merchant_id", "fraud_rate", 3600, 60),
    FeatureSpec.of("card_id", "fraud_count", 86400, 600),
    FeatureSpec.of("card_id", "min", 3600, 60),
)
FIELDS = ("card_id", "merchant_id", "customer_id", "device_id", "ip", "channel")


@dataclass
class Stream:
    ids: list[str]
    ts: np.ndarray
    amount: np.ndarray
    ents: dict[str, list[str]]

    def take(self, idx: Sequence[int]) -> Stream:
        ix = list(idx)
        return Stream(
            [self.ids[i] for i in ix],
            self.ts[ix],
            self.amount[ix],
            {k: [v[i] for i in ix] for k, v in self.ents.items()},
        )


def make_stream(seed: int, n: int, span_ms: int, cards: int, merchants: int) -> Stream:
    rng = np.random.default_rng(seed)
    ts = T0 + np.sort(rng.integers(0, span_ms + 1, n)).astype(np.int64)
    card = rng.integers(0, cards, n)
    ents = {
        "card_id": [f"c{x}" for x in card],
        "merchant_id": [f"m{x}" for x in rng.integers(0, merchants, n)],
        "customer_id": ["" if x == 0 else f"u{x // 2}" for x in card],
        "device_id": [f"d{x % 3}" for x in card],
        "ip": [f"10.0.0.{x}" for x in rng.integers(0, 3, n)],
        "channel": [str(x) for x in rng.choice(["pos", "ecom", "atm"], n)],
    }
    amount = np.round(rng.gamma(2.0, 40.0, n), 2) + 0.01
    return Stream([f"e{seed}_{i}" for i in range(n)], ts, amount, ents)


def run(store: RedisFeatureStore, s: Stream, cuts: Sequence[int]) -> np.ndarray:
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(s.ids)}), len(s.ids)]
    parts = [
        store.update_batch(
            s.ids[a:b], s.ts[a:b], s.amount[a:b], {k: v[a:b] for k, v in s.ents.items()}
        )
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    return np.vstack(parts)


def finish_and_probe(store: RedisFeatureStore, s: Stream, seed: int) -> np.ndarray:
    """Apply the same labels, then one probe event per card and per merchant at the end."""
    rng = np.random.default_rng(seed + 1)
    uniq = sorted(set(s.ids))
    lab = [e for e in uniq if rng.random() < 0.3]
    t_end = int(s.ts.max())
    store.apply_labels_batch(lab, np.full(len(lab), t_end - 1), [rng.random() < 0.5 for _ in lab])
    return probe_at(store, s, t_end)


def probe_at(store: RedisFeatureStore, s: Stream, t: int) -> np.ndarray:
    """One fresh event per card and per merchant of ``s`` at time ``t``: the state, observed."""
    cards = sorted(set(s.ents["card_id"]))
    merchants = sorted(set(s.ents["merchant_id"]))
    k = max(len(cards), len(merchants))
    ents = {
        "card_id": [cards[i % len(cards)] for i in range(k)],
        "merchant_id": [merchants[i % len(merchants)] for i in range(k)],
    }
    src = {c: i for i, c in enumerate(s.ents["card_id"])}
    for f in ("customer_id", "device_id", "ip", "channel"):
        ents[f] = [s.ents[f][src[c]] for c in ents["card_id"]]
    ids = [f"probe{i}" for i in range(k)]
    return store.update_batch(ids, np.full(k, t, dtype=np.int64), np.full(k, 50.0), ents)


def new_store(url: str) -> RedisFeatureStore:
    """A store on its own key prefix (examples do not see each other's state)."""
    client = redis.Redis.from_url(url)
    return RedisFeatureStore(
        client, SPEC, allowed_lateness_seconds=LATENESS_S, prefix=f"p{uuid.uuid4().hex[:12]}:"
    )


def ordered_pass(url: str, s: Stream, seed: int) -> tuple[np.ndarray, np.ndarray]:
    store = new_store(url)
    values = run(store, s, list(range(100, len(s.ids), 100)))
    return values, finish_and_probe(store, s, seed)


def stream_strategy(spans_h: Sequence[int]) -> st.SearchStrategy[tuple[int, Stream]]:
    """(seed, stream) of 5-250 events over one of ``spans_h`` hours, 1-6 cards, 1-4 merchants."""
    return st.builds(
        lambda seed, n, span_h, cards, merchants: (
            seed,
            make_stream(seed, n, span_h * 3_600_000, cards, merchants),
        ),
        st.integers(0, 2**31),
        st.integers(5, 250),
        st.sampled_from(list(spans_h)),
        st.integers(1, 6),
        st.integers(1, 4),
    )


streams = stream_strategy([1, 6, 48])
SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@SETTINGS
@given(streams, st.data())
def test_duplicates_change_nothing(
    url: str, drawn: tuple[int, Stream], data: st.DataObject
) -> None:
    seed, s = drawn
    n = len(s.ids)
    want_values, want_probe = ordered_pass(url, s, seed)
    # redeliver some events later (possibly in the same batch), each keeping its own fields
    dups = data.draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, 30)), max_size=60))
    order = list(range(n))
    for j, delay in dups:
        pos = order.index(j) + 1 + delay
        order.insert(min(pos, len(order)), j)
    cuts = data.draw(st.lists(st.integers(1, len(order) - 1), max_size=8)) if n > 1 else []
    store = new_store(url)
    got = run(store, s.take(order), cuts)
    first = [order.index(i) for i in range(n)]
    assert_features_equal(got[first], want_values, store.feature_names)
    assert_features_equal(finish_and_probe(store, s, seed), want_probe, store.feature_names)
    assert store.late_events == 0


@SETTINGS
@given(streams, st.data())
def test_reordering_within_lateness(
    url: str, drawn: tuple[int, Stream], data: st.DataObject
) -> None:
    seed, s = drawn
    n = len(s.ids)
    _, want_probe = ordered_pass(url, s, seed)
    # arrival key ts + u with 0 <= u <= lateness: no event lags an earlier arrival by more
    lag = data.draw(
        st.lists(st.integers(0, LATENESS_S * 1000), min_size=n, max_size=n), label="lag"
    )
    order = sorted(range(n), key=lambda i: (int(s.ts[i]) + lag[i], i))
    cuts = data.draw(st.lists(st.integers(1, max(n - 1, 1)), max_size=8))
    store = new_store(url)
    run(store, s.take(order), cuts)
    assert store.late_events == 0
    assert_features_equal(finish_and_probe(store, s, seed), want_probe, store.feature_names)


@SETTINGS
@given(streams, st.data())
def test_two_workers_same_keys(url: str, drawn: tuple[int, Stream], data: st.DataObject) -> None:
    seed, s = drawn
    n = len(s.ids)
    _, want_probe = ordered_pass(url, s, seed)
    prefix = f"p{uuid.uuid4().hex[:12]}:"
    split = data.draw(st.booleans(), label="split")
    if split:  # each worker half of the events: keep the stream within the lateness bound
        keep = np.flatnonzero(s.ts - s.ts.min() <= LATENESS_S * 1000 // 2).tolist()
        s = s.take(keep)
        n = len(s.ids)
        _, want_probe = ordered_pass(url, s, seed)
        halves = [list(range(0, n, 2)), list(range(1, n, 2))]
    else:  # both deliver every event, cut differently
        halves = [list(range(n)), list(range(n))]
    cuts = [data.draw(st.lists(st.integers(1, max(n - 1, 1)), max_size=10)) for _ in range(2)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)
    stores: list[RedisFeatureStore] = []

    def work(w: int) -> None:
        client = redis.Redis.from_url(url)
        try:
            store = RedisFeatureStore(
                client, SPEC, allowed_lateness_seconds=LATENESS_S, prefix=prefix
            )
            stores.append(store)
            barrier.wait()
            part = s.take(halves[w])
            if part.ids:
                run(store, part, cuts[w])
            if store.late_events:
                errors.append(AssertionError(f"worker {w}: {store.late_events} late events"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=work, args=(w,)) for w in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    # probe once (a probe counts its events): with a worker's store, whose copy of the buckets
    # was built while the other one appended to them, or with a fresh store (the server alone)
    if data.draw(st.booleans(), label="probe with a worker's store"):
        store = stores[0]
    else:
        store = RedisFeatureStore(
            redis.Redis.from_url(url), SPEC, allowed_lateness_seconds=LATENESS_S, prefix=prefix
        )
    assert_features_equal(finish_and_probe(store, s, seed), want_probe, store.feature_names)
