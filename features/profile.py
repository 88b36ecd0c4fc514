"""Where the feature store's time goes: server (the script) against wall time, by spec.

``python -m features.profile [REDIS_URL]`` streams the bench's synthetic world
(:func:`features.bench.synthetic`) through the store with the default spec and with parts of it,
one batch at a time and with the next batch submitted ahead, and prints per batch of 1,000 the
server's script time (Valkey/Redis ``INFO commandstats``) and the wall time. Without a URL it
starts a Valkey of the embedded stack. It flushes the database it is given.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import redis

from features.bench import stream, synthetic
from features.spec import DEFAULT_SPEC, FeatureSpec
from features.store import RedisFeatureStore


def _card_plain(f: FeatureSpec) -> bool:
    return f.source == "transactions" and f.entity == "card_id" and f.filter is None


SPECS: dict[str, list[FeatureSpec]] = {
    "default": list(DEFAULT_SPEC),
    "default without card filter/distinct": [
        f
        for f in DEFAULT_SPEC
        if not (f.entity == "card_id" and (f.filter is not None or f.agg == "distinct"))
    ],
    "card only": [f for f in DEFAULT_SPEC if _card_plain(f) and f.agg != "distinct"],
    "merchant only": [f for f in DEFAULT_SPEC if f.entity == "merchant_id"],
}


def profile(
    client: redis.Redis,
    spec: Sequence[FeatureSpec],
    ahead: bool,
    warm: int = 70_000,
    timed: int = 30_000,
    batch: int = 1000,
) -> dict[str, float]:
    """Server and wall milliseconds per batch over ``timed`` events after ``warm`` ones."""
    data = synthetic(warm + timed)
    client.flushdb()
    store = RedisFeatureStore(client, spec)
    store.warm_up()
    stream(store, data, 0, warm, ahead, batch)
    client.config_resetstat()
    t0 = time.perf_counter()
    stream(store, data, warm, warm + timed, ahead, batch)
    wall = time.perf_counter() - t0
    stats = client.info("commandstats")
    server_us = sum(v["usec"] for k, v in stats.items() if k in ("cmdstat_eval", "cmdstat_evalsha"))
    n = timed / batch
    return {
        "features": float(len(spec)),
        "kinds": float(len(store.kind_keys())),
        "server_ms_per_batch": server_us / 1000 / n,
        "wall_ms_per_batch": wall * 1000 / n,
        "events_per_second": timed / wall,
    }


def main(url: str | None) -> None:
    from contextlib import ExitStack

    from engine.stack import EmbeddedStack

    with ExitStack() as stack:
        if url is None:
            url = str(stack.enter_context(EmbeddedStack(with_kafka=False)).redis_url)
        client = redis.Redis.from_url(url)
        print(f"{'spec':40s} {'mode':8s} features kinds server_ms wall_ms events/s")
        for name, spec in SPECS.items():
            for ahead in (False, True):
                r = profile(client, spec, ahead)
                print(
                    f"{name:40s} {'ahead' if ahead else 'one':8s} {r['features']:8.0f} "
                    f"{r['kinds']:5.0f} {r['server_ms_per_batch']:9.1f} "
                    f"{r['wall_ms_per_batch']:7.1f} {r['events_per_second']:8,.0f}"
                )


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1] if len(sys.argv) > 1 else None)
