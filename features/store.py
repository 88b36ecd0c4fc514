"""Redis-backed feature store: one script call per batch, Numba for the windows.

Redis layout (``prefix`` defaults to ``"rs:"``):

* ``{prefix}seen:{event_id}`` -- string ``"1"`` with a TTL of ``seen_ttl_seconds``: the event was
  counted; a redelivery finds it and is not counted again.
* ``{prefix}f:{entity}:{resolution_seconds}:{value}`` -- a hash per (entity, resolution) group and
  entity value, e.g. ``rs:f:card_id:60:tok_123``. Fields ``c{bucket}`` (event count, integer) and,
  when the group has a sum or mean feature, ``s{bucket}`` (sum of ``amount``, float), where
  ``bucket = floor(ts_ms / (1000 * resolution_seconds))``. The hash is sparse (only buckets with
  events). Buckets older than ``newest bucket - horizon - lateness`` are removed (``HDEL``) when
  the key is next touched, and the key expires (``EXPIRE``, refreshed by every batch that writes
  to it) after ``(horizon + lateness + 1) * resolution`` seconds, where ``horizon`` is the
  longest window of the group in buckets and ``lateness = ceil(allowed_lateness / resolution)``.

Per batch, :meth:`RedisFeatureStore.update_batch` makes exactly one call of ``update.lua``
(``EVALSHA``, with a transparent ``SCRIPT LOAD`` + retry after ``NOSCRIPT``, e.g. after a server
restart or ``SCRIPT FLUSH``). The script, atomically: marks the event ids (``SET NX EX``), reads the
pre-batch buckets every event of the batch needs, prunes, applies the new events' increments and
refreshes the TTLs. The kernels (:mod:`features.kernels`) then compute every event's windows from
the pre-batch state plus the earlier events of the batch. Because the script is atomic, several
workers may write the same keys: each batch sees a consistent state and no increment is lost.

The script declares every key it touches in ``KEYS``, but a batch's keys hash to different slots, so
it needs a standalone Redis/Valkey (or a cluster-aware split of batches, not provided here).

Missing entity values (``None`` or ``""``, or an entity absent from the ``entities`` mapping) give
NaN for that entity's features for that event, and nothing is written for them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import redis

from features import kernels
from features._types import FloatArray, IntArray
from features.spec import DEFAULT_SPEC, FeatureSpec, validate_spec

#: How long event ids are remembered by default (at least the longest window + lateness).
DEFAULT_SEEN_TTL_SECONDS = 7 * 86400


def _script_source() -> str:
    return Path(__file__).with_name("update.lua").read_text(encoding="utf-8")


@dataclass(frozen=True)
class _Group:
    """The features that share an (entity, resolution): one hash per entity value."""

    entity: str
    resolution_seconds: int
    windows: IntArray  # distinct window lengths in buckets, ascending
    col_count: IntArray
    col_sum: IntArray
    col_mean: IntArray
    has_sum: bool
    keep_buckets: int
    ttl_seconds: int
    key_prefix: str

    @property
    def res_ms(self) -> int:
        return self.resolution_seconds * 1000


def _groups(spec: Sequence[FeatureSpec], prefix: str, lateness_s: int) -> list[_Group]:
    by_group: dict[tuple[str, int], list[tuple[int, FeatureSpec]]] = {}
    for col, f in enumerate(spec):
        by_group.setdefault((f.entity, f.resolution_seconds), []).append((col, f))
    groups = []
    for (entity, res), members in by_group.items():
        windows = sorted({f.n_buckets for _, f in members})
        cols = {agg: np.full(len(windows), -1, dtype=np.int64) for agg in ("count", "sum", "mean")}
        for col, f in members:
            cols[f.agg][windows.index(f.n_buckets)] = col
        keep = windows[-1] + math.ceil(lateness_s / res)
        groups.append(
            _Group(
                entity=entity,
                resolution_seconds=res,
                windows=np.array(windows, dtype=np.int64),
                col_count=cols["count"],
                col_sum=cols["sum"],
                col_mean=cols["mean"],
                has_sum=any(f.agg in ("sum", "mean") for _, f in members),
                keep_buckets=keep,
                ttl_seconds=(keep + 1) * res,
                key_prefix=f"{prefix}f:{entity}:{res}:",
            )
        )
    return groups


def _encode(values: Sequence[Any] | None, n: int) -> tuple[IntArray, list[str]]:
    """Entity values -> (number per event, -1 if missing; distinct values in first-seen order)."""
    if values is None:
        return np.full(n, -1, dtype=np.int64), []
    if len(values) != n:
        msg = f"entity column has {len(values)} values for {n} events"
        raise ValueError(msg)
    index: dict[Any, int] = {}
    setdefault = index.setdefault
    codes = [setdefault(v, len(index)) if v else -1 for v in values]
    return np.array(codes, dtype=np.int64), [str(v) for v in index]


def _as_bytes(x: bytes | str) -> bytes:
    return x.encode() if isinstance(x, str) else x


class RedisFeatureStore:
    """Windowed count/sum/mean features per entity, kept in Redis; see the module docstring.

    ``allowed_lateness_seconds``: how far (in event time) an event may lag behind the newest event
    already stored for its entity value and still be counted; state is kept that much longer.
    ``seen_ttl_seconds``: how long an event id is remembered for idempotency; it must cover the
    longest window plus the lateness, so that a redelivery can never count twice inside any
    window. Default: 7 days, or more if the spec needs it.
    """

    def __init__(
        self,
        client: redis.Redis,
        spec: Sequence[FeatureSpec] = DEFAULT_SPEC,
        seen_ttl_seconds: int | None = None,
        allowed_lateness_seconds: int = 3600,
        prefix: str = "rs:",
    ) -> None:
        self.spec = validate_spec(spec)
        longest = max(f.window_seconds for f in self.spec)
        if seen_ttl_seconds is None:
            seen_ttl_seconds = max(DEFAULT_SEEN_TTL_SECONDS, longest + allowed_lateness_seconds)
        if seen_ttl_seconds < longest + allowed_lateness_seconds:
            msg = (
                f"seen_ttl_seconds={seen_ttl_seconds} must be >= the longest window plus the "
                f"allowed lateness ({longest + allowed_lateness_seconds}s)"
            )
            raise ValueError(msg)
        if allowed_lateness_seconds < 0:
            msg = "allowed_lateness_seconds must be >= 0"
            raise ValueError(msg)
        self.client = client
        self.seen_ttl_seconds = int(seen_ttl_seconds)
        self.allowed_lateness_seconds = int(allowed_lateness_seconds)
        self.prefix = prefix
        self._seen_prefix = f"{prefix}seen:"
        self._names = [f.name for f in self.spec]
        self._groups = _groups(self.spec, prefix, self.allowed_lateness_seconds)
        self._group_meta = " ".join(
            f"{{}} {g.keep_buckets} {g.ttl_seconds} {int(g.has_sum)}" for g in self._groups
        )
        self._script = client.register_script(_script_source())

    @property
    def feature_names(self) -> list[str]:
        return list(self._names)

    def state_key(self, entity: str, resolution_seconds: int, value: str) -> str:
        """The Redis hash holding ``value``'s buckets of the (entity, resolution) group."""
        return f"{self.prefix}f:{entity}:{resolution_seconds}:{value}"

    def seen_key(self, event_id: str) -> str:
        return self._seen_prefix + event_id

    def warm_up(self) -> None:
        """Compile the kernels now so that the first batch does not pay for it."""
        kernels.warm_up()

    def update_batch(
        self,
        event_ids: Sequence[str],
        ts_ms: IntArray,
        amounts: FloatArray,
        entities: Mapping[str, Sequence[str]],
    ) -> FloatArray:
        """Apply the batch (idempotent per event id); return its (n, n_features) float64 matrix."""
        n = len(event_ids)
        out = np.empty((n, len(self._names)), dtype=np.float64)
        if n == 0:
            return out
        ts = np.ascontiguousarray(ts_ms, dtype=np.int64)
        amt = np.ascontiguousarray(amounts, dtype=np.float64)
        if ts.shape != (n,) or amt.shape != (n,):
            msg = f"ts_ms {ts.shape} and amounts {amt.shape} must have shape ({n},)"
            raise ValueError(msg)
        if not np.isfinite(amt).all():
            msg = "amounts must be finite"
            raise ValueError(msg)

        groups = self._groups
        ng = len(groups)
        encoded: dict[str, tuple[IntArray, list[str]]] = {}
        state_keys: list[str] = []
        bases: list[int] = []
        sizes: list[int] = []
        codes: list[IntArray] = []
        buckets: list[IntArray] = []
        lohi: list[IntArray] = []
        refs = np.empty((n, ng, 2), dtype=np.int64)
        for g, grp in enumerate(groups):
            if grp.entity not in encoded:
                encoded[grp.entity] = _encode(entities.get(grp.entity), n)
            code, values = encoded[grp.entity]
            b = ts // grp.res_ms
            k = len(values)
            valid = code >= 0
            lo = np.full(k, np.iinfo(np.int64).max, dtype=np.int64)
            hi = np.full(k, np.iinfo(np.int64).min, dtype=np.int64)
            np.minimum.at(lo, code[valid], b[valid])
            np.maximum.at(hi, code[valid], b[valid])
            lohi.append(np.column_stack((lo - (grp.windows[-1] - 1), hi)).ravel())
            base = len(state_keys)
            kp = grp.key_prefix
            state_keys.extend([kp + v for v in values])
            bases.append(base)
            sizes.append(k)
            codes.append(code)
            buckets.append(b)
            refs[:, g, 0] = np.where(valid, code + (base + 1), 0)
            refs[:, g, 1] = b

        sp = self._seen_prefix
        keys = [sp + e for e in event_ids]
        keys.extend(state_keys)
        args: list[str | int | bytes] = [
            n,
            self.seen_ttl_seconds,
            ng,
            self._group_meta.format(*sizes),
            np.concatenate(lohi).astype("<f8").tobytes(),
            " ".join(map(repr, amt.tolist())),
            refs.astype("<f8").tobytes(),
        ]
        flags_raw, meta_raw, data_raw = self._script(keys=keys, args=args, client=self.client)

        flags = np.frombuffer(_as_bytes(flags_raw), dtype=np.uint8)
        if flags.shape[0] != n:
            msg = f"feature script returned {flags.shape[0]} flags for {n} events"
            raise RuntimeError(msg)
        new = flags == ord("1")
        meta = kernels.parse_numbers(np.frombuffer(_as_bytes(meta_raw), dtype=np.uint8))
        meta = meta.reshape(-1, 2)
        offsets = np.zeros(len(state_keys) + 1, dtype=np.int64)
        np.cumsum(meta[:, 0].astype(np.int64), out=offsets[1:])
        floors = meta[:, 1].astype(np.int64)
        data = kernels.parse_numbers(np.frombuffer(_as_bytes(data_raw), dtype=np.uint8))
        data = data.reshape(-1, 3)
        pre_bucket = data[:, 0].astype(np.int64)
        pre_count = np.ascontiguousarray(data[:, 1])
        pre_sum = np.ascontiguousarray(data[:, 2])

        for g, grp in enumerate(groups):
            code, b, base, k = codes[g], buckets[g], bases[g], sizes[g]
            key_floor = floors[base : base + k]
            counted = new & (code >= 0)
            if k:
                counted &= b >= key_floor[np.maximum(code, 0)]
            e0, e1 = offsets[base], offsets[base + k]
            kernels.aggregate_group(
                code,
                b,
                amt,
                counted,
                offsets[base : base + k + 1] - e0,
                pre_bucket[e0:e1],
                pre_count[e0:e1],
                pre_sum[e0:e1],
                grp.windows,
                grp.col_count,
                grp.col_sum,
                grp.col_mean,
                out,
            )
        return out
