"""Feature update+read throughput on synthetic data with realistic key cardinality.

``measure(client)`` streams ``n_events`` transactions (5,000 cards on 3,500 customers, 10,000
merchants with skewed popularity, a device and an IP per card mostly, about 10,000 events per
simulated day, so entities accumulate weeks of history) through :class:`RedisFeatureStore` in
batches, after a warm-up that is not timed, and reports events/s and round trips per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import redis

from features._types import FloatArray
from features.spec import DEFAULT_SPEC, FeatureSpec
from features.store import Pending, RedisFeatureStore

T0 = 1_767_225_600_000


class _CountingRedis(redis.Redis):
    calls = 0

    def execute_command(self, *args: object, **options: object) -> object:
        type(self).calls += 1
        return super().execute_command(*args, **options)  # type: ignore[no-untyped-call]


def synthetic(n: int, seed: int = 0, per_day: int = 10_000) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    cards = rng.integers(0, 5000, n)
    pop = rng.zipf(1.6, n) % 10_000
    hosts = rng.integers(1, 3, n)
    ts = T0 + np.sort(rng.integers(0, int(n / per_day * 86_400_000) + 1, n))
    return {
        "ids": [f"ev{seed}_{i}" for i in range(n)],
        "ts": ts.astype(np.int64),
        "amount": np.round(rng.lognormal(3.5, 1.0, n), 2),
        "card_id": [f"card_{c:06d}" for c in cards],
        "customer_id": [f"cust_{c * 7 // 10:06d}" for c in cards],
        "merchant_id": [f"merch_{m:05d}" for m in pop],
        "device_id": [f"dev_{c:06d}" for c in np.where(rng.random(n) < 0.9, cards, cards + 7)],
        "ip": [f"10.{c // 250}.{c % 250}.{d}" for c, d in zip(cards, hosts, strict=True)],
        "channel": rng.choice(np.array(["pos", "ecom", "atm"]), n, p=[0.6, 0.35, 0.05]).tolist(),
    }


#: The event fields :func:`synthetic` makes besides ids, times and amounts.
FIELDS = ("card_id", "customer_id", "merchant_id", "device_id", "ip", "channel")


def stream(
    store: RedisFeatureStore,
    data: dict[str, object],
    a: int,
    b: int,
    ahead: bool,
    batch_size: int = 1000,
) -> int:
    """Feed events ``a:b`` of ``data`` (:func:`synthetic`) through ``store`` in batches: one at a
    time (``update_batch``, as a live worker) or with the next batch submitted before the last
    one is read (``submit_batch``, as replays and backtests). Returns the number of batches."""
    ids, ts, amount = data["ids"], data["ts"], data["amount"]
    if not (
        isinstance(ids, list) and isinstance(ts, np.ndarray) and isinstance(amount, np.ndarray)
    ):
        raise TypeError
    batches = 0
    waiting: Pending[FloatArray] | None = None
    for s in range(a, b, batch_size):
        e = min(s + batch_size, b)
        ents = {f: data[f][s:e] for f in FIELDS}  # type: ignore[index]
        if ahead:  # the next batch is on the server while this process reads the last one
            sent = store.submit_batch(ids[s:e], ts[s:e], amount[s:e], ents)
            if waiting is not None:
                waiting.result()
            waiting = sent
        else:
            store.update_batch(ids[s:e], ts[s:e], amount[s:e], ents)
        batches += 1
    if waiting is not None:
        waiting.result()
    return batches


def bytes_per_value(usage: dict[str, tuple[int, int]], entity: str) -> tuple[float, float]:
    """Bytes of every kind of ``entity`` alone (its filters, distinct fields, labels; not pairs)
    per value of its plain transaction kind, and that number of values
    (:meth:`RedisFeatureStore.memory_usage`)."""
    total = sum(b for ident, (b, _) in usage.items() if ident.split(":")[1] == entity)
    values = max(usage.get(f"t:{entity}", (0, 0))[1], 1)
    return total / values, float(values)


def measure(
    client: redis.Redis,
    n_events: int = 200_000,
    batch_size: int = 1000,
    spec: Sequence[FeatureSpec] = DEFAULT_SPEC,
    warm_events: int = 100_000,
) -> dict[str, float]:
    """Throughput of feature update + read on a flushed database: the first half of the timed
    events one batch at a time (``update_batch``, as a live worker does), the second half with
    the next batch submitted before the previous one is read (``submit_batch``, as replays and
    backtests do: the server and this process work at the same time)."""
    import time

    counting = _CountingRedis(connection_pool=client.connection_pool)
    counting.flushdb()
    store = RedisFeatureStore(counting, spec)
    store.warm_up()
    data = synthetic(warm_events + n_events)

    def run(a: int, b: int, ahead: bool) -> tuple[float, int]:
        t0 = time.perf_counter()
        batches = stream(store, data, a, b, ahead, batch_size)
        return time.perf_counter() - t0, batches

    half = n_events // 2
    run(0, warm_events, ahead=True)
    _CountingRedis.calls = 0
    trips0 = store.round_trips
    one_secs, one_batches = run(warm_events, warm_events + half, ahead=False)
    secs, batches = run(warm_events + half, warm_events + n_events, ahead=True)
    trips = (_CountingRedis.calls + store.round_trips - trips0) / max(batches + one_batches, 1)
    usage = store.memory_usage()
    return {
        "features_events_per_second": (n_events - half) / secs,
        "features_events_per_second_one_at_a_time": half / one_secs,
        "features_round_trips_per_batch": trips,
        "features_batch_size": float(batch_size),
        "features_count": float(len(spec)),
        "features_bytes_per_card": bytes_per_value(usage, "card_id")[0],
        "features_bytes_per_merchant": bytes_per_value(usage, "merchant_id")[0],
    }


def handbook_memory(
    client: redis.Redis,
    seed: int = 0,
    nb_days: int = 183,
    batch_size: int = 1000,
    label_delay_days: int = 7,
    **store_options: Any,
) -> dict[str, float]:
    """Feed ``replay.handbook.simulate_handbook(seed)`` (5,000 cards, 10,000 merchants) through
    the store with the default spec (labels ``label_delay_days`` after each transaction, merged in
    event time) on a flushed database; report ``MEMORY USAGE`` per kind and per entity.
    ``store_options`` go to :class:`RedisFeatureStore` (e.g. ``compact_growth=1``)."""
    import time

    from replay.handbook import simulate_handbook

    client.flushdb()
    df = simulate_handbook(seed, nb_days=nb_days)
    store = RedisFeatureStore(client, **store_options)
    store.warm_up()
    n = len(df)
    ids = df["event_id"].astype(str).tolist()
    ts = df["ts"].to_numpy(np.int64)
    amt = df["amount"].to_numpy(np.float64)
    fraud = df["is_fraud"].to_numpy(bool)
    label_ts = ts + label_delay_days * 86_400_000
    cols = {f: df[f].astype(str).tolist() for f in store.entity_fields if f in df.columns}
    labelled = 0
    t0 = time.perf_counter()
    for a in range(0, n, batch_size):
        b = min(a + batch_size, n)
        due = int(np.searchsorted(label_ts, ts[b - 1], side="right"))
        if due > labelled:
            store.apply_labels_batch(ids[labelled:due], label_ts[labelled:due], fraud[labelled:due])
            labelled = due
        store.update_batch(ids[a:b], ts[a:b], amt[a:b], {k: v[a:b] for k, v in cols.items()})
    secs = time.perf_counter() - t0
    out: dict[str, float] = {"events": float(n), "seconds": secs, "events_per_second": n / secs}
    per_kind = store.memory_usage()
    for ident, (nbytes, nvalues) in per_kind.items():
        out[f"bytes:{ident}"] = float(nbytes)
        out[f"fields:{ident}"] = float(nvalues)
    out["bytes_per_card"], out["active_cards"] = bytes_per_value(per_kind, "card_id")
    out["bytes_per_merchant"], out["active_merchants"] = bytes_per_value(per_kind, "merchant_id")
    other = 0
    for key in client.scan_iter(match=f"{store.prefix}*", count=1000):
        other += int(client.memory_usage(key, samples=0) or 0)
    out["bytes_all_keys"] = float(other)
    out["used_memory"] = float(client.info("memory")["used_memory"])
    return out


if __name__ == "__main__":  # pragma: no cover
    import json
    import sys

    print(json.dumps(measure(redis.Redis.from_url(sys.argv[1])), indent=1))
