"""Redis-backed feature store: one script call per batch, Numba for the windows.

Redis layout (``prefix`` defaults to ``"rs:"``):

* ``{prefix}b:{digest}:{bucket}`` -- a *kind*'s records (a kind is a record stream: source,
  entity, optional filter, optional distinct field; e.g. ``t:card_id``,
  ``t:card_id:channel=ecom``, ``t:card_id:d=merchant_id``, ``l:merchant_id`` for fraud labels).
  An entity value (``tok_123``; pairs of fields combine their parts) belongs to bucket
  ``hash64(value) mod buckets`` (default 64 buckets per kind, :mod:`features.hashing`); a bucket
  is one string of fixed-width little-endian float64 records (``t``, ``c`` and the columns the
  kind's features need, see :mod:`features.kernels`), each ending with its value's 64-bit hash.
  The script only *appends* (``APPEND``: it never copies what it extends, and never does
  per-value work). ``digest`` names the kind and the bucket count.
* ``{prefix}e:{kind}`` -- per bucket its *epoch*: random when the bucket is created, bumped when a
  compaction rewrites it. The worker keeps a copy of the buckets it reads
  (:mod:`features.cache`) and sends, per bucket of the batch, the epoch and the bytes it holds
  (and the bytes its batches still in flight append): the reply carries nothing for a current
  copy, only the bytes appended since by others for a copy that is behind, and the whole bucket
  after a rewrite. Another worker, the labels script or a flushed database can never make the
  worker use a stale copy. The epoch outlives the records (its TTL is renewed with theirs and on
  every write), so no epoch means no records.
* Compaction: Python merges records that are older than the finest window into the coarser buckets
  that are still needed and drops the ones no window can see any more (idle values included), for
  a whole bucket once it grew by ``compact_growth`` (2) times its size at the last plan, and
  writes it back on a later call with a compare-and-set on the epoch (appends since are kept).
  Bucket keys get a TTL of the kind's horizon (longest window + delay + resolution + allowed
  lateness) as a wall-clock backstop, renewed by the worker every eighth of it.
* ``{prefix}seen:{t|e}:{day}`` -- per event-time day (UTC), field = event id: the event was applied
  (idempotency); for transactions the value is what label features need (its time, and the
  bucket and hash of its value of each label kind's entity). Deleted in *event time*: once the
  watermark has passed the end of the day by more than the retention (transactions: the longest
  reach of a label feature plus ``max_skew``, at least ``max_skew``; account events:
  ``max_skew``), so a fast replay of months keeps only the days that can still matter.
  ``seen_ttl_seconds`` (wall clock) is a backstop.
* ``{prefix}lseen:{day}`` -- labels already applied, per label day; deleted with the transaction
  days they may refer to.
* ``{prefix}days:{t|e}`` -- sorted set indexing those day hashes by the time they may go.
* ``{prefix}wm:{t|e}`` -- the global watermark: the largest event time counted so far (per source).
* ``{prefix}swm:{t|e}`` -- the scope watermarks: per *scope* value (the partition key of the topic:
  ``card_id`` for transactions, ``customer_id`` for account events), the largest event time
  counted for it. Field TTL ``seen_ttl_seconds``.

Event time and lateness. A worker consumes several partitions, which may progress very unevenly in
event time (catch-up after a restart, replay of compressed history); lateness is therefore judged
per scope, not against one global clock. An event at ``t`` is *too late* when

* ``t < (largest counted time of its scope) - allowed_lateness`` (out of order within its own
  partition: all events of a card are in one partition), or
* ``t < (global watermark) - max_skew`` (its partition lags the most advanced one by more than
  ``max_skew_seconds``, default one day, at least the lateness),

earlier events of its batch included. A too-late event is scored against the current state,
remembered as seen, not added to the state; :attr:`RedisFeatureStore.late_events` counts them.
Every other event is applied where it belongs and every value is exact (equal to
:func:`features.reference.reference_features`). Compaction keeps that true: the records of a kind
whose entity contains the scope field (card, card x merchant) are merged/dropped relative to that
card's own watermark and the lateness; those of the other kinds (merchant, customer, device, ip,
labels), which receive events from every partition, relative to the global watermark and
``max_skew``. Entity state is thus bounded in event time: records older than the kind's reach plus
lateness or skew leave their bucket at its next compaction (an idle card is judged against the
global watermark - ``max_skew``); key TTLs (wall clock) are a backstop.

Per batch, :meth:`RedisFeatureStore.update_batch` makes exactly one ``EVALSHA`` (re-loaded
transparently after ``NOSCRIPT``, e.g. after a restart or ``SCRIPT FLUSH``); the script is atomic,
so several workers may write the same keys. It needs ``HEXPIRE`` (Redis >= 7.4, Valkey >= 9) and a
standalone server (the keys of a batch are not in one cluster slot).

Replays and backtests use :meth:`RedisFeatureStore.submit_batch` / ``submit_labels`` instead: one
``EVAL`` per batch (the script's text: nothing in flight can meet ``NOSCRIPT``), sent on the store's
own connection before the previous reply is read, so the server applies batch k+1 while Python
computes batch k's features. The order of batches and labels is the order of submission; a
compaction planned from batch k's reply goes out with batch k+2 (the compare-and-set makes that
safe; sums may differ from one-at-a-time in the last bits, as the summation order of merged
buckets does).
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import redis

from features import cache as kcache
from features import kernels
from features._types import BoolArray, FloatArray, IntArray
from features.cache import KindCache, Slots
from features.hashing import HashArray, combine, hash64, low52
from features.kernels import AGG_CODES
from features.resp import bulk as _bulk
from features.resp import pack_args as _pack_args
from features.spec import (
    AMOUNT_FIELD,
    DEFAULT_SPEC,
    LABEL_AGGS,
    FeatureSpec,
    Filter,
    gcd_all,
    validate_spec,
)

DAY_MS = 86_400_000
DEFAULT_SEEN_TTL_SECONDS = 7 * 86400
DEFAULT_MAX_SKEW_SECONDS = 86400
#: The partition key of each source's topic: lateness is judged per value of this field.
SCOPE_FIELD = {"transactions": "card_id", "events": "customer_id"}
#: Fewest bytes a compaction must remove from a bucket to be written back (a bucket's garbage
#: stays below this or twice its live size).
COMPACT_MIN_BYTES = 8192
_COLS = ("t", "c", "s", "q", "mn", "mx", "h")
T = TypeVar("T")


def _script_source(name: str) -> str:
    return Path(__file__).with_name(name).read_text(encoding="utf-8")


@dataclass
class _KindFeature:
    col: int
    agg: int
    res_ms: int
    nb: int
    delay_ms: int
    reach_ms: int
    res: int


@dataclass
class _Kind:
    source: str  # transactions | events | labels
    entity: str
    filter: Filter | None
    distinct: str | None
    key: str
    features: list[_KindFeature] = field(default_factory=list)
    scoped: bool = False  # entity contains the scope field: compacted per scope watermark
    allowance_ms: int = 0  # lateness (scoped) or skew: how far back a counted event may be
    columns: tuple[int, ...] = ()
    ttl_seconds: int = 0
    keep_ms: int = 0
    tier_age: IntArray = field(default_factory=lambda: np.zeros(0, np.int64))
    tier_res: IntArray = field(default_factory=lambda: np.zeros(0, np.int64))
    data_prefix: str = ""  # + bucket number = the key of a bucket's records
    _params: tuple[IntArray, IntArray, IntArray, IntArray, IntArray] | None = None

    @property
    def width(self) -> int:
        return len(self.columns)

    @property
    def cols(self) -> IntArray:
        return np.array(self.columns, dtype=np.int64)

    def params(self) -> tuple[IntArray, IntArray, IntArray, IntArray, IntArray]:
        """The kernel's per-feature arrays: aggregation, resolution, buckets, delay, column."""
        if self._params is None:
            self._params = self._make_params()
        return self._params

    def _make_params(self) -> tuple[IntArray, IntArray, IntArray, IntArray, IntArray]:
        return (
            np.array([f.agg for f in self.features], dtype=np.int64),
            np.array([f.res_ms for f in self.features], dtype=np.int64),
            np.array([f.nb for f in self.features], dtype=np.int64),
            np.array([f.delay_ms for f in self.features], dtype=np.int64),
            np.array([f.col for f in self.features], dtype=np.int64),
        )


@dataclass
class _Prepared:
    """A batch ready to send, and the arrays its reply is read against."""

    source: str
    n: int
    out: FloatArray
    keys: list[str] = field(default_factory=list)
    args: list[Any] = field(default_factory=list)
    ts: IntArray = field(default_factory=lambda: np.zeros(0, np.int64))
    amt: FloatArray = field(default_factory=lambda: np.zeros(0))
    kinds: list[_Kind] = field(default_factory=list)
    groups: dict[str, _Group] = field(default_factory=dict)
    members: dict[str, BoolArray] = field(default_factory=dict)
    hashes: dict[str, FloatArray] = field(default_factory=dict)
    rec7: FloatArray = field(default_factory=lambda: np.zeros((0, 7)))
    batch: int = 0
    sent: dict[str, _Sent] = field(default_factory=dict)
    released: bool = False
    first: BoolArray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    #: per event, the batch position of its id's first occurrence (a copy gets its value)
    first_of: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


@dataclass
class _Group:
    """A batch's values of one entity: per event its value number (-1: none); per value its
    64-bit hash, cache slot and bucket; the buckets the batch touches."""

    code: IntArray
    hashes: HashArray
    slots: IntArray
    bucket: IntArray
    touched: IntArray


@dataclass
class _Sent:
    """What a batch sent for one kind: the buckets it touched, the bytes of each the copy held
    then, and per record sent its bucket (index into ``touched``) and event."""

    touched: IntArray
    held: IntArray
    inflight: IntArray  # bytes of earlier batches still in flight, per bucket
    own: IntArray  # bytes this batch appends (before late events are dropped), per bucket
    rec_bucket: IntArray
    rec_event: IntArray


def _kind_id(source: str, entity: str, flt: Filter | None, distinct: str | None) -> str:
    parts = [source[0], entity.replace("+", "|")]
    if flt is not None:
        parts.append(flt.key())
    if distinct is not None:
        parts.append("d=" + distinct)
    return ":".join(parts)


def _packed(strings: list[str]) -> tuple[bytes, bytes]:
    """Strings as one argument (concatenated UTF-8) and their byte lengths (float64s)."""
    text = "".join(strings)
    if text.isascii():
        return text.encode("ascii"), np.fromiter(
            map(len, strings), dtype="<f8", count=len(strings)
        ).tobytes()
    parts = [x.encode("utf-8") for x in strings]
    return b"".join(parts), np.fromiter(map(len, parts), dtype="<f8", count=len(parts)).tobytes()


def _checked_amounts(amounts: FloatArray, n: int) -> FloatArray:
    amt = np.ascontiguousarray(amounts, dtype=np.float64)
    if amt.shape != (n,):
        msg = f"ts_ms and amounts {amt.shape} must have shape ({n},)"
        raise ValueError(msg)
    if not np.isfinite(amt).all():
        msg = "amounts must be finite"
        raise ValueError(msg)
    return amt


class _Call:
    """One script call on the wire; its reply (or error) once read."""

    __slots__ = ("done", "error", "reply")

    def __init__(self) -> None:
        self.done = False
        self.reply: Any = None
        self.error: BaseException | None = None


class Pending(Generic[T]):
    """A batch (or labels) sent to the server whose reply has not been used yet.

    ``result()`` turns the reply into the value once and raises what the call raised. Replies
    are read, and turned into values, in the order the calls were sent, whatever order the
    results are asked for: each batch's copy of the buckets it touches assumes that the batches
    sent before it were finished first. A worker retrying a failed batch while the next one is
    in flight asks for the retry's result first; finishing the retry before the batch in flight
    made every retried batch fail ("feature cache out of step") and dead-lettered its events.
    """

    def __init__(
        self,
        store: RedisFeatureStore,
        call: _Call | None,
        finish: Callable[[Any], T],
        failed: Callable[[], None] | None = None,
        batch: bool = False,
    ) -> None:
        self._store = store
        self._call = call
        self._finish = finish
        self._failed = failed
        self._batch = batch  # a transactions batch: the store's "batch read last" is set by it
        self._value: T | None = None
        self._error: Exception | None = None
        self._resolved = False
        self._state: tuple[BoolArray, int] | None = None  # the store's view of this batch
        if call is not None:
            store._unfinished.append(self)  # noqa: SLF001 (one module)

    def result(self) -> T:
        if not self._resolved:
            if self._call is not None:
                self._store._resolve_through(self)  # noqa: SLF001 (one module)
            if not self._resolved:  # no call, or interrupted while being read
                self._resolve()
        if self._error is not None:
            raise self._error
        if self._state is not None:  # what the store says of "the batch read last" is this one
            self._store.redelivered, self._store._last_counted = self._state  # noqa: SLF001
        return self._value  # type: ignore[return-value]

    def _resolve(self) -> None:
        """Read the reply and make the value (or keep the error for ``result()``)."""
        store = self._store
        reply = None
        try:
            if self._call is not None:
                try:
                    store._read_until(self._call)  # noqa: SLF001 (one module)
                finally:
                    if self._call.error is not None and self._failed is not None:
                        self._failed()
                if self._call.error is not None:
                    raise self._call.error
                reply = self._call.reply
            self._value = self._finish(reply)
            if self._batch:
                self._state = (store.redelivered, store._last_counted)  # noqa: SLF001
        except Exception as exc:  # noqa: BLE001 - raised by result(), to the batch's owner
            self._error = exc
        self._resolved = True


def _new_epoch() -> str:
    """Epoch of a bucket created by a call: random, so that a copy of a bucket that was deleted
    (expired, flushed) and created again never passes for current."""
    return str((1 << 50) + secrets.randbits(49))


def _as_bytes(x: bytes | str) -> bytes:
    return x.encode("latin-1") if isinstance(x, str) else x


def _as_strings(col: Sequence[Any]) -> list[str]:
    """The column as strings, a missing value ('', None, 0) as ''."""
    vals = col if isinstance(col, list) else list(col)
    try:
        "".join(vals)  # all strings already: the common case, checked in C
    except TypeError:
        return ["" if not v else str(v) for v in vals]
    return vals


def _column_hashes(col: Sequence[Any]) -> tuple[HashArray, BoolArray]:
    """Per value its 64-bit hash and whether it is present (a missing one, '', None or 0, is
    hashed as '')."""
    vals = col if isinstance(col, list) else list(col)
    present = np.fromiter(map(bool, vals), dtype=bool, count=len(vals))
    try:
        return hash64(vals), present  # all strings: the common case, no copy
    except TypeError:
        return hash64(["" if not v else str(v) for v in vals]), present


def entity_hashes(
    spec_entity: str, columns: Mapping[str, Sequence[Any]], n: int
) -> tuple[HashArray, BoolArray]:
    """Per event the 64-bit hash of its entity value and whether it has one (pairs: every part).

    A pair's hash combines its parts' hashes (so a pair costs no string per event)."""
    hashes: list[HashArray] = []
    present = np.ones(n, dtype=bool)
    for p in spec_entity.split("+"):
        col = columns.get(p)
        if col is None:
            return np.zeros(n, dtype=np.uint64), np.zeros(n, dtype=bool)
        if len(col) != n:
            msg = f"field {p!r} has {len(col)} values for {n} events"
            raise ValueError(msg)
        part, has = _column_hashes(col)
        present &= has
        hashes.append(part)
    return (hashes[0] if len(hashes) == 1 else combine(hashes)), present


def filter_mask(flt: Filter | None, columns: Mapping[str, Sequence[Any]], n: int) -> BoolArray:
    if flt is None:
        return np.ones(n, dtype=bool)
    return flt.mask(columns.get(flt.field), n)


class RedisFeatureStore:
    """Declarative windowed features kept in Redis; see the module docstring.

    ``allowed_lateness_seconds``: how far (event time) an event may lag behind the newest counted
    event of its scope (card / customer) and still be applied. ``max_skew_seconds``: how far it
    may lag behind the global watermark (partitions progressing unevenly); default one day, at
    least the lateness. ``seen_ttl_seconds``: wall-clock backstop for how long event ids are
    remembered (and label look-ups possible); at least the longest reach (window + delay) plus
    the lateness. ``buckets``: buckets per kind (all workers of a deployment must agree; a
    bucket should hold a few hundred entity values: a worker that has not read it yet reads it
    whole). ``compact_min_bytes``: a bucket is not rewritten for less. ``compact_growth``: a
    bucket is compacted once it grew by this many times its size after the last compaction
    (memory against compaction work: 1 keeps buckets under twice their live size, the default
    2 under three times, with about half the compaction work). ``cache_max_values``: entity
    values the worker's copy indexes per entity before it starts afresh (between batches, when
    none is in flight). See the module docstring.
    """

    def __init__(
        self,
        client: redis.Redis,
        spec: Sequence[FeatureSpec] = DEFAULT_SPEC,
        seen_ttl_seconds: int | None = None,
        allowed_lateness_seconds: int = 3600,
        prefix: str = "rs:",
        *,
        max_skew_seconds: int | None = None,
        buckets: int = 64,
        compact_min_bytes: int = COMPACT_MIN_BYTES,
        compact_growth: float = 2.0,
        cache_max_values: int = 4_000_000,
    ) -> None:
        self.spec = validate_spec(spec)
        if buckets < 1:
            msg = f"buckets={buckets} must be >= 1"
            raise ValueError(msg)
        self.buckets = int(buckets)
        self.compact_min_bytes = int(compact_min_bytes)
        if compact_growth <= 0:
            msg = f"compact_growth={compact_growth} must be > 0"
            raise ValueError(msg)
        self.compact_growth = float(compact_growth)
        if not prefix or any(c.isspace() for c in prefix):
            msg = f"prefix {prefix!r} must be non-empty and without whitespace"
            raise ValueError(msg)
        if allowed_lateness_seconds < 0:
            msg = "allowed_lateness_seconds must be >= 0"
            raise ValueError(msg)
        if max_skew_seconds is None:
            max_skew_seconds = max(DEFAULT_MAX_SKEW_SECONDS, allowed_lateness_seconds)
        if max_skew_seconds < allowed_lateness_seconds:
            msg = (
                f"max_skew_seconds={max_skew_seconds} must be >= allowed_lateness_seconds="
                f"{allowed_lateness_seconds}"
            )
            raise ValueError(msg)
        self.max_skew_seconds = int(max_skew_seconds)
        longest = max(f.reach_seconds for f in self.spec)
        if seen_ttl_seconds is None:
            seen_ttl_seconds = max(DEFAULT_SEEN_TTL_SECONDS, longest + max_skew_seconds)
        if seen_ttl_seconds < longest + allowed_lateness_seconds:
            msg = (
                f"seen_ttl_seconds={seen_ttl_seconds} must be >= the longest reach (window + "
                f"delay + resolution) plus the allowed lateness "
                f"({longest + allowed_lateness_seconds}s)"
            )
            raise ValueError(msg)
        self.client = client
        self.seen_ttl_seconds = int(seen_ttl_seconds)
        self.allowed_lateness_seconds = int(allowed_lateness_seconds)
        self.prefix = prefix
        #: Events (transactions and account events) that arrived later than the allowed lateness.
        self.late_events = 0
        #: Of the batch read last, the events an earlier batch had already counted (redelivered
        #: by Kafka, or repeated in a file): their features include their first delivery's record
        #: once, never twice.
        self.redelivered: BoolArray = np.zeros(0, dtype=bool)
        self.labels_unknown = 0
        self.labels_duplicate = 0
        self._last_counted = 0
        #: Script calls made (one per batch; a NOSCRIPT reload adds a SCRIPT LOAD and a retry).
        self.round_trips = 0
        self._names = [f.name for f in self.spec]
        self._n_out = len(self._names)
        self._kinds: dict[str, _Kind] = {}
        self._rates: list[tuple[int, int, int]] = []  # (out col, fraud col, count col)
        self._build_kinds()
        self._update = client.register_script(_script_source("update.lua"))
        self._labels = client.register_script(_script_source("labels.lua"))
        # compactions planned, by kind key: bucket -> (bytes planned over, new records)
        self._pending: dict[str, dict[int, tuple[int, bytes]]] = {}
        self.cache_max_values = int(cache_max_values)
        self._slots: dict[str, Slots] = {}
        self._caches: dict[str, KindCache] = {}
        self._forget_copy()
        self._batches = 0
        self._open = 0  # batches prepared and not yet finished (or failed)
        self._inflight: deque[_Call] = deque()
        #: Calls sent whose reply has not been turned into a value yet, in the order sent.
        self._unfinished: deque[Pending[Any]] = deque()
        self._conn: Any = None
        self._script_bulk: dict[str, bytes] = {}  # EVAL's script argument, packed once

    # -- spec -> kinds ------------------------------------------------------------------------

    def _kind(self, source: str, entity: str, flt: Filter | None, distinct: str | None) -> _Kind:
        ident = _kind_id(source, entity, flt, distinct)
        if ident not in self._kinds:
            self._kinds[ident] = _Kind(source, entity, flt, distinct, f"{self.prefix}e:{ident}")
        return self._kinds[ident]

    def _add(self, kind: _Kind, f: FeatureSpec, agg: str, col: int) -> None:
        kind.features.append(
            _KindFeature(
                col=col,
                agg=AGG_CODES[agg],
                res_ms=f.resolution_seconds * 1000,
                nb=f.n_buckets,
                delay_ms=f.label_delay_seconds * 1000,
                reach_ms=f.reach_seconds * 1000,
                res=f.resolution_seconds * 1000,
            )
        )

    def _build_kinds(self) -> None:
        extra = self._n_out
        for col, f in enumerate(self.spec):
            if f.agg in LABEL_AGGS:
                self._add(self._kind("labels", f.entity, None, None), f, "fraud_count", col)
                if f.agg == "fraud_rate":
                    fc, cc = extra, extra + 1
                    extra += 2
                    self._kinds[_kind_id("labels", f.entity, None, None)].features[-1].col = fc
                    self._add(self._kind("transactions", f.entity, None, None), f, "count", cc)
                    self._rates.append((col, fc, cc))
                continue
            distinct = f.field if f.agg == "distinct" else None
            self._add(self._kind(f.source, f.entity, f.filter, distinct), f, f.agg, col)
        self._n_work = extra
        lateness_ms = self.allowed_lateness_seconds * 1000
        skew_ms = self.max_skew_seconds * 1000
        for kind in self._kinds.values():
            scope = SCOPE_FIELD.get(kind.source)
            kind.scoped = scope is not None and scope in kind.entity.split("+")
            kind.allowance_ms = lateness_ms if kind.scoped else skew_ms
            aggs = {kf.agg for kf in kind.features}
            cols = [0, 1]
            if aggs & {AGG_CODES[a] for a in ("sum", "mean", "std", "ratio")}:
                cols.append(2)
            if AGG_CODES["std"] in aggs:
                cols.append(3)
            if AGG_CODES["min"] in aggs:
                cols.append(4)
            if AGG_CODES["max"] in aggs:
                cols.append(5)
            if kind.distinct is not None or kind.source == "labels":
                cols.append(6)
            if kind.source == "labels":
                cols = [0, 6]
            kind.columns = tuple(cols)
            digest = hashlib.sha1(
                f"{kind.key}|{self.buckets}".encode(), usedforsecurity=False
            ).hexdigest()[:12]
            kind.data_prefix = f"{self.prefix}b:{digest}:"
            reach = max(kf.reach_ms for kf in kind.features)
            kind.keep_ms = reach + kind.allowance_ms
            kind.ttl_seconds = math.ceil(kind.keep_ms / 1000) + 60
            reaches = sorted({kf.reach_ms for kf in kind.features})
            ages = [0] + [r + 1 for r in reaches[:-1]]
            kind.tier_age = np.array(ages, dtype=np.int64)
            kind.tier_res = np.array(
                [gcd_all(kf.res for kf in kind.features if kf.reach_ms >= a) for a in ages],
                dtype=np.int64,
            )
        self._label_kinds = [k for k in self._kinds.values() if k.source == "labels"]
        # how long (event time) the seen day hashes must stay: idempotency needs max_skew (an
        # older event is too late anyway); label look-ups need the label kinds' reach on top
        self._retain_ms = {
            "transactions": max([skew_ms, *(k.keep_ms for k in self._label_kinds)]),
            "events": skew_ms,
        }

    # -- introspection ------------------------------------------------------------------------

    @property
    def feature_names(self) -> list[str]:
        return list(self._names)

    @property
    def entity_fields(self) -> tuple[str, ...]:
        """Fields :meth:`update_batch` needs (in ``entities`` or ``fields``) for the spec."""
        out: set[str] = set()
        for f in self.spec:
            if f.source == "transactions":
                out |= f.event_fields()
            else:
                out |= set(f.entity_fields)  # read by transactions
        return tuple(sorted(out))

    @property
    def account_event_fields(self) -> tuple[str, ...]:
        """Fields :meth:`update_events_batch` needs besides ``type``."""
        out: set[str] = set()
        for f in self.spec:
            if f.source == "events":
                out |= f.event_fields()
        out.discard("type")
        return tuple(sorted(out))

    def kind_keys(self) -> dict[str, str]:
        """The epoch hash of each kind (its buckets: ``memory_usage``), by kind id."""
        return {ident: k.key for ident, k in self._kinds.items()}

    def memory_usage(self) -> dict[str, tuple[int, int]]:
        """Per kind id: bytes the server holds for it (``MEMORY USAGE`` of its epoch hash and
        buckets) and the number of entity values with records in it."""
        out: dict[str, tuple[int, int]] = {}
        for ident, k in self._kinds.items():
            buckets = [f"{k.data_prefix}{b}" for b in range(self.buckets)]
            pipe = self.client.pipeline(transaction=False)
            for key in [k.key, *buckets]:
                pipe.memory_usage(key, samples=0)
            for key in buckets:
                pipe.get(key)
            replies = pipe.execute()
            total = sum(int(x or 0) for x in replies[: len(buckets) + 1])
            values: set[int] = set()
            for raw in replies[len(buckets) + 1 :]:
                rec = np.frombuffer(_as_bytes(raw or b""), dtype="<u8").reshape(-1, k.width + 1)
                values.update(rec[:, k.width].tolist())
            out[ident] = (total, len(values))
        return out

    def holds(self, ident: str, value: str) -> bool:
        """Whether the server holds records of ``value`` in the kind ``ident`` (e.g.
        ``"t:card_id"``)."""
        k = self._kinds[ident]
        parts = k.entity.split("+")
        hashes, _ = entity_hashes(
            k.entity, dict(zip(parts, ([v] for v in value.split("|")), strict=True)), 1
        )
        vh = int(hashes[0])
        raw = self.client.get(f"{k.data_prefix}{vh % self.buckets}") or b""
        rec = np.frombuffer(_as_bytes(raw), dtype="<u8").reshape(-1, k.width + 1)
        return bool((rec[:, k.width] == np.uint64(vh)).any())

    def has_counted(self) -> bool:
        """Whether any transaction was counted into this store (its watermark exists)."""
        return bool(self.client.exists(f"{self.prefix}wm:t"))

    def warm_up(self) -> None:
        """Compile the kernels now so that the first batch does not pay for it."""
        kernels.warm_up()
        kcache.warm_up()
        hash64(["x"])

    # -- writes -------------------------------------------------------------------------------

    def update_batch(
        self,
        event_ids: Sequence[str],
        ts_ms: IntArray,
        amounts: FloatArray,
        entities: Mapping[str, Sequence[str]],
        fields: Mapping[str, Sequence[str]] | None = None,
    ) -> FloatArray:
        """Apply a batch of transactions (idempotent per event id); return its feature matrix."""
        amt = _checked_amounts(amounts, len(event_ids))
        return self._apply(self._prepare("transactions", event_ids, ts_ms, amt, entities, fields))

    def submit_batch(
        self,
        event_ids: Sequence[str],
        ts_ms: IntArray,
        amounts: FloatArray,
        entities: Mapping[str, Sequence[str]],
        fields: Mapping[str, Sequence[str]] | None = None,
    ) -> Pending[FloatArray]:
        """Send a batch of transactions now and read its features later.

        Replays and backtests submit batch k+1 before reading batch k, so that the server applies
        one batch while this process computes the features of the previous one (two cores: the
        server's and ours). Batches and labels are applied in the order they were submitted, on
        one connection; ``update_batch`` gives the same features, read at once.
        """
        amt = _checked_amounts(amounts, len(event_ids))
        prep = self._prepare("transactions", event_ids, ts_ms, amt, entities, fields)
        if prep.n == 0:
            return Pending(self, None, lambda _reply: self._nothing(prep))
        try:
            call = self._send(self._update, prep.keys, prep.args)
        except BaseException:
            self._release(prep)
            raise
        return Pending(
            self, call, lambda r: self._finish(prep, r), lambda: self._release(prep), batch=True
        )

    def update_events_batch(
        self,
        event_ids: Sequence[str],
        ts_ms: IntArray,
        types: Sequence[str],
        entities: Mapping[str, Sequence[str]],
        fields: Mapping[str, Sequence[str]] | None = None,
    ) -> int:
        """Apply a batch of account events (``type``: login, password_change, ...); returns how
        many were counted (new and not too late). One round trip."""
        n = len(event_ids)
        merged = dict(fields or {})
        merged["type"] = list(types)
        self._apply(self._prepare("events", event_ids, ts_ms, np.zeros(n), entities, merged))
        return self._last_counted

    def _nothing(self, prep: _Prepared) -> FloatArray:
        """An empty batch read: nothing counted, nothing redelivered."""
        self._last_counted = 0
        self.redelivered = np.zeros(0, dtype=bool)
        return prep.out

    def _apply(self, prep: _Prepared) -> FloatArray:
        if prep.n == 0:
            return self._nothing(prep)
        self._resolve_through(None)  # batches sent before this one are finished before it
        try:
            reply = self._eval(self._update, prep.keys, prep.args)
        except BaseException:
            self._release(prep)
            raise
        return self._finish(prep, reply)

    def _forget_copy(self) -> None:
        """Start the worker's copy of the buckets afresh (each is read whole when next seen)."""
        self._slots = {k.entity: Slots() for k in self._kinds.values()}
        self._caches = {k.key: KindCache(k.width, self.buckets) for k in self._kinds.values()}
        self._pending = {}

    def _release(self, prep: _Prepared) -> None:
        """The batch's appends are no longer in flight (applied and read, or failed)."""
        if prep.released:
            return
        prep.released = True
        self._open -= 1
        for key, sent in prep.sent.items():
            cache = self._caches[key]
            cache.inflight[sent.touched] = np.maximum(cache.inflight[sent.touched] - sent.own, 0)

    def _prepare(
        self,
        source: str,
        event_ids: Sequence[str],
        ts_ms: IntArray,
        amt: FloatArray,
        entities: Mapping[str, Sequence[str]],
        fields: Mapping[str, Sequence[str]] | None,
    ) -> _Prepared:
        """Everything the script call needs, and what reading its reply needs (no I/O)."""
        n = len(event_ids)
        out = np.empty((n, self._n_out if source == "transactions" else 0), dtype=np.float64)
        if n == 0:
            return _Prepared(source, n, out)
        ts = np.ascontiguousarray(ts_ms, dtype=np.int64)
        if ts.shape != (n,):
            msg = f"ts_ms {ts.shape} and amounts must have shape ({n},)"
            raise ValueError(msg)
        columns: dict[str, Sequence[Any]] = dict(entities)
        if fields:
            columns.update(fields)
        if source == "transactions":
            columns[AMOUNT_FIELD] = amt  # type: ignore[assignment]  # an array: numeric filters
        is_tx = source == "transactions"
        kinds = [
            k
            for k in self._kinds.values()
            if (k.source == source) or (is_tx and k.source in ("events", "labels"))
        ]
        # ids: first occurrence in the batch, grouped by event-time day
        ids = list(map(str, event_ids))
        uindex = {e: u for u, e in enumerate(dict.fromkeys(ids))}
        uid = np.fromiter(map(uindex.__getitem__, ids), np.int64, count=n)
        nu = len(uindex)
        first = np.zeros(n, dtype=bool)
        first_pos = np.full(nu, -1, dtype=np.int64)
        rev = np.arange(n - 1, -1, -1)
        first_pos[uid[rev]] = rev
        first[first_pos] = True
        uday = ts[first_pos] // DAY_MS
        uorder = np.argsort(uday, kind="stable")
        rank = np.empty(nu, dtype=np.int64)
        rank[uorder] = np.arange(1, nu + 1)
        days, starts = np.unique(uday[uorder], return_index=True)
        ends = np.append(starts[1:], nu)
        ulist = list(uindex)
        sorted_ids = [ulist[u] for u in uorder.tolist()]
        src = "t" if is_tx else "e"
        # scope (partition key) of every event: lateness is judged per scope value
        scol = columns.get(SCOPE_FIELD[source])
        sindex: dict[str, int] = {}
        if scol is None:
            scode = np.zeros(n, dtype=np.int64)
            sindex[""] = 0
        else:
            if len(scol) != n:
                msg = f"field {SCOPE_FIELD[source]!r} has {len(scol)} values for {n} events"
                raise ValueError(msg)
            svals = _as_strings(scol)
            sindex = {v: i for i, v in enumerate(dict.fromkeys(svals))}
            scode = np.fromiter(map(sindex.__getitem__, svals), np.int64, count=n)
        keys: list[str] = [
            f"{self.prefix}wm:{src}",
            f"{self.prefix}swm:{src}",
            f"{self.prefix}days:{src}",
        ]
        keys += [f"{self.prefix}seen:{src}:{int(d)}" for d in days]
        evbin = np.empty((n, 3), dtype="<f8")
        evbin[:, 0] = ts
        evbin[:, 1] = rank[uid]
        evbin[:, 2] = scode + 1
        args: list[Any] = [
            n,
            nu,
            len(days),
            self.allowed_lateness_seconds * 1000,
            self.seen_ttl_seconds,
            self.max_skew_seconds * 1000,
            self._retain_ms[source],
            len(sindex),
            _new_epoch(),
            evbin.tobytes(),
            np.where(first, ord("1"), ord("0")).astype(np.uint8).tobytes(),
            " ".join(f"{a + 1} {b}" for a, b in zip(starts.tolist(), ends.tolist(), strict=True)),
            " ".join(str(int(d)) for d in days.tolist()),
        ]
        args += [*_packed(list(sindex)), *_packed(sorted_ids)]
        # entity groups: the batch's values of each entity, their hashes, slots and buckets. The
        # copy's index of values only grows: past cache_max_values it starts afresh, when no
        # batch is in flight (between live batches; a replay with batches ahead never stops)
        if self._open == 0 and any(len(x) > self.cache_max_values for x in self._slots.values()):
            self._forget_copy()
        self._batches += 1
        batch = self._batches
        groups: dict[str, _Group] = {}
        for k in kinds:
            if k.entity in groups:
                continue
            per_event, present = entity_hashes(k.entity, columns, n)
            vh, inv = np.unique(per_event[present], return_inverse=True)
            code = np.full(n, -1, dtype=np.int64)
            code[present] = inv
            bucket = (vh % self.buckets).astype(np.int64)
            groups[k.entity] = _Group(
                code, vh, self._slots[k.entity].of(vh), bucket, np.unique(bucket)
            )
        if is_tx and self._label_kinds:
            # what a label needs to find its transaction's buckets: time, then per label kind
            # the bucket (-1: none) and hash of the entity value
            first_ev = first_pos[uorder]
            seen = np.zeros((nu, 1 + 2 * len(self._label_kinds)), dtype="<f8")
            seen[:, 0] = ts[first_ev]
            for c, k in enumerate(self._label_kinds):
                grp = groups[k.entity]
                code = grp.code[first_ev]
                has = code >= 0
                seen[:, 1 + 2 * c] = -1.0
                seen[has, 1 + 2 * c] = grp.bucket[code[has]]
                seen.view("<u8")[has, 2 + 2 * c] = grp.hashes[code[has]]
            seen_blob = seen.tobytes()
            seen_lens = np.full(nu, seen.shape[1] * 8, dtype="<f8").tobytes()
        else:
            seen_blob = b"1" * nu
            seen_lens = np.ones(nu, dtype="<f8").tobytes()
        args += [seen_blob, seen_lens]
        keys += [k.key for k in kinds]
        # the batch's records (7 columns) and, per kind, which events feed it
        rec7 = np.zeros((n, 7))
        rec7[:, 0] = ts
        rec7[:, 1] = 1.0
        rec7[:, 2] = amt
        rec7[:, 3] = amt * amt
        rec7[:, 4] = amt
        rec7[:, 5] = amt
        members: dict[str, BoolArray] = {}
        hashes: dict[str, FloatArray] = {}
        sent: dict[str, _Sent] = {}
        now_s = time.time()
        for k in kinds:
            grp = groups[k.entity]
            cache = self._caches[k.key]
            cache.ensure(len(self._slots[k.entity]))
            cache.bucket[grp.slots] = grp.bucket
            cache.hash[grp.slots] = grp.hashes
            touched = grp.touched
            write = k.source == source
            comps = self._compactions(k, cache, batch)
            # per bucket the epoch and the bytes this copy holds (epoch 0: none, the server
            # sends it whole); TTLs are renewed when this process last did so an eighth of the
            # TTL ago
            held = cache.held[touched].copy()
            inflight = cache.inflight[touched].copy()
            expected = np.empty((len(touched), 3), dtype="<f8")
            expected[:, 0] = cache.epoch[touched]
            expected[:, 1] = held
            expected[:, 2] = inflight
            renew = cache.ttl_at[touched] < now_s - k.ttl_seconds / 8
            cache.ttl_at[touched[renew]] = now_s
            args += [
                f"{int(write)} {k.width + 1} {k.ttl_seconds} {len(comps)} {len(touched)}",
                k.data_prefix,
                " ".join(map(str, touched.tolist())),
                expected.tobytes(),
                np.where(renew, ord("1"), ord("0")).astype(np.uint8).tobytes(),
            ]
            rec_bucket = np.zeros(0, dtype=np.int64)
            rec_event = np.zeros(0, dtype=np.int64)
            own = np.zeros(len(touched), dtype=np.int64)
            if write:
                code = grp.code
                m = (code >= 0) & first & filter_mask(k.filter, columns, n)
                if k.distinct is not None:
                    dv = columns.get(k.distinct)
                    if dv is None:
                        m[:] = False
                    else:
                        dh, has = _column_hashes(dv)
                        m &= has
                        hashes[k.key] = low52(dh)
                members[k.key] = m
                idx = np.flatnonzero(m)
                rb = np.searchsorted(touched, grp.bucket[code[idx]])
                order = np.argsort(rb, kind="stable")
                rec_event, rec_bucket = idx[order], rb[order]
                recs = np.empty((len(rec_event), k.width + 1), dtype="<f8")
                recs[:, : k.width] = rec7[rec_event][:, list(k.columns)]
                if k.key in hashes:
                    recs[:, k.width - 1] = hashes[k.key][rec_event]
                recs.view("<u8")[:, k.width] = grp.hashes[code[rec_event]]
                counts = np.bincount(rec_bucket, minlength=len(touched))
                own = counts * (8 * (k.width + 1))
                cache.inflight[touched] += own
                if counts.size and counts.max() > 65535:
                    msg = "more than 65535 records of one bucket in a batch"
                    raise ValueError(msg)
                args += [
                    recs.tobytes(),
                    counts.astype(">u2").tobytes(),
                    (rec_event + 1).astype("<f8").tobytes(),
                ]
            for comp in comps:
                args += comp
            sent[k.key] = _Sent(touched, held, inflight, own, rec_bucket, rec_event)
        self._open += 1
        return _Prepared(
            source, n, out, keys, args, ts, amt, kinds, groups, members, hashes, rec7, batch, sent,
            first=first, first_of=first_pos[uid],
        )  # fmt: skip

    def _compactions(self, k: _Kind, cache: KindCache, batch: int) -> list[list[Any]]:
        """The kind's planned compactions, with the epoch each expects; those buckets are then
        read whole again (their copy is not known to be current until a reply says so)."""
        out: list[list[Any]] = []
        for b, (length, body) in self._pending.pop(k.key, {}).items():
            if cache.epoch[b] <= 0:
                continue
            out.append([str(b), f"{cache.epoch[b]:.0f}", length, body])
            cache.epoch[b] = 0.0
            cache.rewrite_at[b] = batch
        return out

    def _finish(self, prep: _Prepared, reply: Any) -> FloatArray:
        """Read the script's reply: flags, watermarks, records -> features; plan compactions."""
        self._release(prep)
        source, n, out, ts, amt = prep.source, prep.n, prep.out, prep.ts, prep.amt
        kinds, groups, members, hashes = prep.kinds, prep.groups, prep.members, prep.hashes
        rec7 = prep.rec7
        is_tx = source == "transactions"
        flags = np.frombuffer(_as_bytes(reply[0]), dtype=np.uint8)
        if flags.shape[0] != n:
            msg = f"feature script returned {flags.shape[0]} flags for {n} events"
            raise RuntimeError(msg)
        counted = flags == ord("1")
        # first in its batch yet already seen: an earlier batch counted it (a redelivery)
        self.redelivered = (flags == ord("0")) & prep.first
        late = int(np.count_nonzero(flags == ord("2")))
        self.late_events += late
        self._last_counted = int(np.count_nonzero(counted))
        wm_pre = int(_as_bytes(reply[1]))
        wm_now = max(wm_pre, int(ts[counted].max())) if counted.any() else wm_pre
        work = np.empty((n, self._n_work), dtype=np.float64) if is_tx else None
        again = self.redelivered.astype(np.int64)
        no_records = np.zeros(n, dtype=np.int64)
        for j, k in enumerate(kinds):
            grp = groups[k.entity]
            cache = self._caches[k.key]
            cols = k.cols
            sent = prep.sent[k.key]
            self._catch_up(k, cache, sent, reply[3 + 4 * j : 7 + 4 * j], prep.batch)
            cnt = (counted & members[k.key]).astype(np.int64) if k.key in members else no_records
            batch7 = rec7
            if k.key in hashes:
                batch7 = rec7.copy()
                batch7[:, 6] = hashes[k.key]
            if work is not None and k.features:
                kernels.compute_kind(
                    grp.code,
                    cnt,
                    again,
                    ts,
                    amt,
                    batch7,
                    cache.start[grp.slots],
                    cache.cnt[grp.slots],
                    cache.pool,
                    cols,
                    *k.params(),
                    work,
                )
            if not grp.hashes.size:
                continue
            written = k.source == source
            if written:
                cache.add_batch(grp.slots, grp.code, cnt, batch7, cols)
                kept = counted[sent.rec_event]
                own = np.bincount(sent.rec_bucket[kept], minlength=len(sent.touched))
                cache.held[sent.touched] += own * (8 * (k.width + 1))
            # compact what this batch writes (and, with transactions, the label kinds); kinds of
            # the other source are compacted by that source's batches (their own clocks)
            if written or k.source == "labels":
                self._plan_compaction(k, cache, sent.touched, wm_now)
        if work is None:
            return out
        work = work[prep.first_of]  # a copy within the batch gets its first occurrence's value
        out[:] = work[:, : self._n_out]
        for col, fc, cc in self._rates:
            c = work[:, cc]
            with np.errstate(invalid="ignore", divide="ignore"):
                out[:, col] = np.where(c > 0, work[:, fc] / np.where(c > 0, c, 1.0), 0.0)
            out[np.isnan(c), col] = np.nan
        return out

    def _catch_up(
        self, k: _Kind, cache: KindCache, sent: _Sent, part: Sequence[Any], batch: int
    ) -> None:
        """Bring the copy of the batch's buckets to their pre-batch state on the server: load
        the buckets sent whole, append the records others (or this process's batches still in
        flight) appended since the copy was taken."""
        state = np.frombuffer(_as_bytes(part[0]), dtype=np.uint8)
        if state.shape[0] != sent.touched.shape[0]:
            msg = f"feature script returned {state.shape[0]} states for {len(sent.touched)} buckets"
            raise RuntimeError(msg)
        back = np.flatnonzero(state != ord("1"))
        if back.size == 0:
            if np.any(cache.held[sent.touched] != sent.held + sent.inflight):
                msg = "feature cache out of step with the server"
                raise RuntimeError(msg)
            return
        rw = 8 * (k.width + 1)
        lens = np.array(_as_bytes(part[2]).split(), dtype=np.int64)
        blob = np.frombuffer(_as_bytes(part[1]), dtype="<u8").reshape(-1, k.width + 1)
        buckets = sent.touched[back]
        whole = state[back] == ord("0")
        # whole buckets: forget what the copy held, take every record returned
        if whole.any():
            epochs = np.array(_as_bytes(part[3]).split(), dtype=np.float64)
            wb = buckets[whole]
            cache.clear(wb)
            fresh = batch >= cache.rewrite_at[wb]
            cache.epoch[wb[fresh]] = epochs[fresh]
        # buckets behind: the reply starts where this batch's copy ended when it was sent; the
        # copy may have grown since (batches in flight before this one): skip that much
        skip = np.where(whole, 0, cache.held[buckets] - sent.held[back])
        if np.any((skip < 0) | (skip % rw != 0) | (skip > lens)):
            msg = "feature cache out of step with the server"
            raise RuntimeError(msg)
        cache.held[buckets] = np.where(whole, lens, sent.held[back] + lens)
        starts = np.zeros(lens.size + 1, dtype=np.int64)
        np.cumsum(lens // rw, out=starts[1:])
        first = starts[:-1] + skip // rw
        count = starts[1:] - first
        rows = np.repeat(first - np.concatenate([[0], np.cumsum(count)[:-1]]), count) + np.arange(
            int(count.sum())
        )
        if rows.size == 0:
            return
        got = blob[rows]
        vh = np.ascontiguousarray(got[:, k.width])
        slots = self._slots[k.entity].of(vh)
        cache.ensure(len(self._slots[k.entity]))
        cache.bucket[slots] = (vh % np.uint64(self.buckets)).astype(np.int64)
        cache.hash[slots] = vh
        rec7 = np.zeros((got.shape[0], 7))
        rec7[:, list(k.columns)] = got[:, : k.width].view("<f8")
        cache.append(slots, rec7, k.cols)

    def _plan_compaction(self, k: _Kind, cache: KindCache, touched: IntArray, wm_now: int) -> None:
        """Merge/drop the records of the buckets that grew by ``compact_growth`` times their size
        at the last plan (and by ``compact_min_bytes``): a bucket holds at most about
        1 + ``compact_growth`` times its live records, and each record is rewritten a bounded
        number of times. The result is written by a later call (compare-and-set on the bucket's
        epoch) when it at least halves the bucket."""
        due = touched[
            (
                cache.held[touched] - cache.base[touched]
                >= np.maximum(self.compact_min_bytes, self.compact_growth * cache.base[touched])
            )
            & (cache.epoch[touched] > 0)
        ]
        if due.size == 0:
            return
        # every due bucket at once: their values grouped by bucket
        n_slots = len(self._slots[k.entity])
        wanted = np.zeros(self.buckets + 1, dtype=bool)  # index -1 (no bucket) -> False
        wanted[due] = True
        live = np.flatnonzero(wanted[cache.bucket[:n_slots]] & (cache.cnt[:n_slots] > 0))
        slots = live[np.argsort(cache.bucket[live], kind="stable")]
        off, rec = cache.gather(slots, k.cols)
        if k.scoped:
            # every event that may still be counted for a card has t >= its newest record
            # - lateness (its scope watermark is at least that) and t >= watermark - skew
            newest = np.full(len(slots), -(2**62), dtype=np.int64)
            has = np.diff(off) > 0
            newest[has] = np.maximum.reduceat(rec[:, 0], off[:-1][has]).astype(np.int64)
            floor = wm_now - self.max_skew_seconds * 1000 + k.allowance_ms
            now = np.maximum(newest, floor)
        else:
            now = np.full(len(slots), wm_now, dtype=np.int64)
        new_off, comp = kernels.compact_values(
            off,
            rec,
            now,
            k.allowance_ms,
            k.keep_ms,
            k.tier_age,
            k.tier_res,
            k.distinct is not None,
            k.source != "labels",
        )
        body = np.empty((comp.shape[0], k.width + 1), dtype="<f8")
        body[:, : k.width] = comp[:, list(k.columns)]
        body.view("<u8")[:, k.width] = np.repeat(cache.hash[slots], np.diff(new_off))
        # the rows of each due bucket (its values are adjacent)
        vb = cache.bucket[slots]
        bounds = np.searchsorted(vb, due, side="left"), np.searchsorted(vb, due, side="right")
        rw = 8 * (k.width + 1)
        for b, v0, v1 in zip(due.tolist(), bounds[0].tolist(), bounds[1].tolist(), strict=True):
            part = body[new_off[v0] : new_off[v1]]
            length = int(cache.held[b])
            cache.base[b] = part.shape[0] * rw
            # rewrite a bucket only when it at least halves (amortised: appends stay the common
            # case; the TTLs bound what an idle bucket keeps)
            if length - cache.base[b] >= max(self.compact_min_bytes, length // 2):
                self._pending.setdefault(k.key, {})[b] = (length, part.tobytes())

    def _send(self, script: Any, keys: list[str], args: list[Any]) -> _Call:
        """Send EVAL (the script's text, so that no call in flight can meet NOSCRIPT and be
        retried out of order) on the store's own connection, without reading the reply."""
        if self._conn is None:
            self._conn = self.client.connection_pool.get_connection()
        text = self._script_bulk.get(script.sha)
        if text is None:
            source = script.script
            text = _bulk(source if isinstance(source, bytes) else source.encode())
            self._script_bulk[script.sha] = text
        head = b"*%d\r\n$4\r\nEVAL\r\n%s%s" % (
            3 + len(keys) + len(args),
            text,
            _bulk(str(len(keys)).encode()),
        )
        try:
            self._conn.send_packed_command([head, _pack_args([*keys, *args])], check_health=False)
        except BaseException as exc:
            self._drop_connection(exc)
            raise
        call = _Call()
        self._inflight.append(call)
        self.round_trips += 1
        return call

    def _read_until(self, call: _Call) -> None:
        """Read replies in order up to ``call``'s; a connection failure fails every call in
        flight (none of them is known to be applied or not: the caller retries the batch)."""
        while not call.done:
            first = self._inflight.popleft()
            try:
                first.reply = self._conn.read_response()
            except redis.exceptions.ResponseError as exc:  # an error reply: the stream is intact
                first.error = exc
            except BaseException as exc:
                first.error = exc
                first.done = True
                self._drop_connection(exc)
                raise
            first.done = True
        if not self._inflight and self._conn is not None:
            self.client.connection_pool.release(self._conn)
            self._conn = None

    def _drop_connection(self, exc: BaseException) -> None:
        for c in self._inflight:
            c.error, c.done = exc, True
        self._inflight.clear()
        if self._conn is not None:
            self._conn.disconnect()
            self.client.connection_pool.release(self._conn)
            self._conn = None

    def _resolve_through(self, last: Pending[Any] | None) -> None:
        """Finish the calls sent before ``last``, then ``last`` (``None``: every call sent)."""
        while self._unfinished:
            first = self._unfinished.popleft()
            first._resolve()  # noqa: SLF001 (one module)
            if first is last:
                return

    def _eval(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA with the command packed here (redis-py's per-argument packing costs more
        than the script for a 1,000-event batch); loads the script after NOSCRIPT. Behind calls
        still in flight it goes through :meth:`_send` instead, to keep the order."""
        if self._inflight:
            call = self._send(script, keys, args)
            self._read_until(call)
            if call.error is not None:
                raise call.error
            return call.reply
        body = _pack_args([*keys, *args])
        self.round_trips += 1
        for attempt in range(2):
            head = b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n%s" % (
                3 + len(keys) + len(args),
                script.sha.encode(),
                _bulk(str(len(keys)).encode()),
            )
            conn = self.client.connection_pool.get_connection()
            try:
                conn.send_packed_command([head, body], check_health=False)  # type: ignore[no-untyped-call]
                try:
                    return conn.read_response()
                except redis.exceptions.NoScriptError:
                    if attempt:
                        raise
            except BaseException:
                conn.disconnect()  # type: ignore[no-untyped-call]
                raise
            finally:
                self.client.connection_pool.release(conn)
            script.sha = self.client.script_load(script.script)
        raise AssertionError  # pragma: no cover

    # -- labels -------------------------------------------------------------------------------

    def apply_labels_batch(
        self,
        event_ids: Sequence[str],
        label_ts_ms: IntArray | Sequence[int],
        is_fraud: Sequence[bool] | BoolArray,
    ) -> int:
        """Apply labels (one round trip); returns how many fraud labels were applied (see
        :meth:`_labels_call` for the semantics)."""
        call = self._labels_call(event_ids, label_ts_ms, is_fraud)
        if call is None:
            return 0
        return self._labels_done(self._eval(self._labels, *call))

    def submit_labels(
        self,
        event_ids: Sequence[str],
        label_ts_ms: IntArray | Sequence[int],
        is_fraud: Sequence[bool] | BoolArray,
    ) -> Pending[int]:
        """Send labels now, behind the batches already submitted; ``result()`` is the number of
        fraud labels applied."""
        call = self._labels_call(event_ids, label_ts_ms, is_fraud)
        if call is None:
            return Pending(self, None, lambda _reply: 0)
        return Pending(self, self._send(self._labels, *call), self._labels_done)

    def _labels_done(self, reply: Any) -> int:
        self.labels_unknown = int(reply[2])
        self.labels_duplicate = int(reply[3])
        return int(reply[0])

    def _labels_call(
        self,
        event_ids: Sequence[str],
        label_ts_ms: IntArray | Sequence[int],
        is_fraud: Sequence[bool] | BoolArray,
    ) -> tuple[list[str], list[Any]] | None:
        """The labels script's keys and arguments (None: nothing to do).

        A label is applied once per event id (the first one whose transaction the store knows;
        an unknown transaction's label is not remembered, so it may come again). A fraud label
        adds (transaction time, label time) to the transaction's merchant/card/... of every label
        feature; ``fraud_count`` for a transaction at ``t`` counts only labels with time <= t.
        """
        n = len(event_ids)
        if n == 0 or not self._label_kinds:
            return None
        lts = np.asarray(label_ts_ms, dtype=np.int64)
        fraud = np.asarray(is_fraud, dtype=bool)
        if lts.shape != (n,) or fraud.shape != (n,):
            msg = f"label_ts_ms and is_fraud must have shape ({n},)"
            raise ValueError(msg)
        order = np.argsort(lts // DAY_MS, kind="stable")
        ids = [str(event_ids[i]) for i in order.tolist()]
        lts, fraud = lts[order], fraud[order]
        ldays, starts = np.unique(lts // DAY_MS, return_index=True)
        ends = np.append(starts[1:], n)
        reach_days = math.ceil(max(k.keep_ms for k in self._label_kinds) / DAY_MS) + 1
        lo = int(ldays.min()) - reach_days
        hi = int(ldays.max()) + 1
        keys = [f"{self.prefix}days:t"]
        keys += [f"{self.prefix}lseen:{int(d)}" for d in ldays]
        keys += [f"{self.prefix}seen:t:{d}" for d in range(hi, lo - 1, -1)]
        keys += [k.key for k in self._label_kinds]
        args: list[Any] = [
            n,
            len(ldays),
            hi - lo + 1,
            len(self._label_kinds),
            self.seen_ttl_seconds,
            " ".join(
                [
                    str(max(k.ttl_seconds for k in self._label_kinds)),
                    _new_epoch(),
                    *(k.data_prefix for k in self._label_kinds),
                ]
            ),
            " ".join(f"{a + 1} {b}" for a, b in zip(starts.tolist(), ends.tolist(), strict=True)),
            " ".join(str(int(d)) for d in ldays.tolist()),
        ]
        args += ids
        args += [str(int(x)) for x in lts.tolist()]
        args += ["1" if f else "0" for f in fraud.tolist()]
        return keys, args
