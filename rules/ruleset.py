"""A validated, versioned rule set and its batch evaluation.

Conditions are compiled twice at load (by :mod:`rules.loader`): into a CEL program, and, when the
condition is within the supported subset, into numpy column operations (:mod:`rules.vector`).
A batch is evaluated rule by rule over whole columns; CEL runs per event only for rules outside
the subset and for the rare rows whose transaction values have an unexpected type, so the hits are
exactly CEL's (a property test compares both).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import cel
import numpy as np
import numpy.typing as npt

from rules.lists import RedisList, decode_members
from rules.vector import Env, Membership, Unsupported, VectorProgram, compile_vector

log = logging.getLogger(__name__)

ACTIONS = ("block", "review", "allow", "tag")


class RuleHit(NamedTuple):
    """A rule that fired for one event."""

    rule_id: str
    action: str
    reason: str


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule as written in its file (``file`` and ``line`` say where)."""

    id: str
    condition: str
    action: str
    reason: str
    description: str = ""
    priority: int = 100
    enabled: bool = True
    owner: str = ""
    file: str = ""
    line: int = 0

    @property
    def hit(self) -> RuleHit:
        return RuleHit(self.id, self.action, self.reason)


@dataclass(frozen=True, slots=True)
class CompiledRule:
    rule: Rule
    program: cel.Program
    hit: RuleHit


def _convertible(value: Any) -> bool:
    try:
        cel.Context().add_variable("v", value)
    except Exception:
        return False
    return True


class RuleSet:
    """Rules in evaluation order (priority, then file, then position), with their named lists.

    Satisfies ``engine.protocols.RuleSetLike``. Build it with :func:`rules.loader.load_rule_set`.

    ``txn_fields`` / ``feature_refs`` are the transaction fields and features the enabled rules
    refer to; ``None`` means "all of them" (a rule uses the map in a way that cannot be analysed).
    ``txn_types`` are the declared types of transaction fields (for the vectorised evaluator);
    ``redis_lists`` are the lists whose members come from Redis sets.
    """

    def __init__(
        self,
        version: str,
        rules: Sequence[CompiledRule],
        lists: Mapping[str, list[Any]],
        txn_fields: frozenset[str] | None,
        feature_refs: frozenset[str] | None,
        files: Sequence[str] = (),
        txn_types: Mapping[str, str] | None = None,
        redis_lists: Sequence[RedisList] = (),
    ) -> None:
        self._version = version
        self._all = tuple(rules)
        self._active = tuple(r for r in rules if r.rule.enabled)
        self._hits = [r.hit for r in self._active]
        self._lists: dict[str, list[Any]] = {k: list(v) for k, v in lists.items()}
        self._members = {k: Membership(v) for k, v in self._lists.items()}
        self._txn_fields = None if txn_fields is None else tuple(sorted(txn_fields))
        self._feature_refs = feature_refs
        self._txn_types = dict(txn_types or {})
        self.files = tuple(files)
        #: Rule evaluations that raised (missing field, type error...) and so did not fire.
        self.evaluation_errors = 0
        #: The same, by rule id.
        self.evaluation_errors_by_rule: Counter[str] = Counter()
        self._columns_cache: dict[tuple[str, ...], tuple[list[str], list[int]]] = {}
        self._index_cache: dict[tuple[str, ...], dict[str, int]] = {}
        self._ctx: cel.Context | None = None
        self._vector: list[VectorProgram | None] = []
        #: Rule id -> why it is evaluated per event by CEL instead of over columns.
        self.per_event_rules: dict[str, str] = {}
        for cr in self._active:
            try:
                self._vector.append(compile_vector(cr.rule.condition, self._txn_types, lists))
            except Unsupported as exc:
                self._vector.append(None)
                self.per_event_rules[cr.rule.id] = str(exc)
            except RecursionError:  # pragma: no cover - bounded by MAX_DEPTH
                self._vector.append(None)
                self.per_event_rules[cr.rule.id] = "too deep"
        # Redis-backed lists.
        self.redis_lists = tuple(redis_lists)
        self._redis: Any = None
        self._list_ttl = 5.0
        self._lists_loaded_at = -1e18
        self._lists_lock = threading.Lock()
        #: Failed refreshes of Redis lists (the previous members stay in use).
        self.list_refresh_failures = 0

    @property
    def version(self) -> str:
        """Content hash of the rule files and list files (12 hex digits)."""
        return self._version

    @property
    def rules(self) -> tuple[Rule, ...]:
        """All rules, enabled or not, in evaluation order."""
        return tuple(r.rule for r in self._all)

    @property
    def lists(self) -> dict[str, list[Any]]:
        return {k: list(v) for k, v in self._lists.items()}

    def __len__(self) -> int:
        return len(self._all)

    def __repr__(self) -> str:
        n, active = len(self._all), len(self._active)
        return f"RuleSet(version={self._version!r}, rules={n}, active={active})"

    # -- named lists -----------------------------------------------------------------------

    def set_list(self, name: str, values: Sequence[Any]) -> None:
        """Replace the members of a named list (takes effect from the next batch)."""
        if name not in self._lists:
            msg = f"unknown list {name!r}"
            raise KeyError(msg)
        lists = dict(self._lists)
        lists[name] = list(values)
        members = dict(self._members)
        members[name] = Membership(values)
        self._lists, self._members, self._ctx = lists, members, None

    def attach_redis(self, client: Any, ttl_seconds: float = 5.0) -> None:
        """Fetch Redis-backed lists through ``client`` now and every ``ttl_seconds`` after.

        Refreshes happen at the start of :meth:`evaluate_batch` when the members are older than
        the TTL (one pipelined ``SMEMBERS`` round trip for all lists). No-op without Redis lists.
        """
        self._redis = client
        self._list_ttl = float(ttl_seconds)
        if self.redis_lists:
            self.refresh_lists(client)

    def refresh_lists(self, client: Any | None = None) -> bool:
        """Re-read every Redis-backed list now; True when any changed.

        A Redis failure is logged and counted in ``list_refresh_failures``; the previous members
        stay in use (a list never empties because Redis blinked).
        """
        client = client if client is not None else self._redis
        if client is None or not self.redis_lists:
            return False
        with self._lists_lock:
            self._lists_loaded_at = time.monotonic()
            try:
                pipe = client.pipeline(transaction=False)
                for rl in self.redis_lists:
                    pipe.smembers(rl.key)
                results = pipe.execute()
            except Exception as exc:
                self.list_refresh_failures += 1
                log.warning("could not refresh Redis lists (keeping the previous members): %s", exc)
                return False
            changed = False
            for rl, members in zip(self.redis_lists, results, strict=True):
                values = decode_members(members or ())
                if values != self._lists.get(rl.name):
                    self.set_list(rl.name, values)
                    changed = True
            return changed

    def _maybe_refresh_lists(self) -> None:
        if self._redis is not None and self.redis_lists:
            if time.monotonic() - self._lists_loaded_at >= self._list_ttl:
                self.refresh_lists()

    # -- evaluation ------------------------------------------------------------------------

    def _columns(self, feature_names: Sequence[str]) -> tuple[list[str], list[int]]:
        key = tuple(feature_names)
        cached = self._columns_cache.get(key)
        if cached is None:
            wanted = self._feature_refs
            pairs = [(name, j) for j, name in enumerate(key) if wanted is None or name in wanted]
            cached = ([p[0] for p in pairs], [p[1] for p in pairs])
            if len(self._columns_cache) > 16:
                self._columns_cache.clear()
            self._columns_cache[key] = cached
        return cached

    def _feature_index(self, feature_names: Sequence[str]) -> dict[str, int]:
        key = tuple(feature_names)
        cached = self._index_cache.get(key)
        if cached is None:
            cached = {}
            for j, name in enumerate(key):
                cached.setdefault(name, j)
            if len(self._index_cache) > 16:
                self._index_cache.clear()
            self._index_cache[key] = cached
        return cached

    def _context(self) -> cel.Context:
        ctx = self._ctx
        if ctx is None:
            ctx = cel.Context()
            if self._lists:
                ctx.add_variable("lists", self._lists)
            self._ctx = ctx
        return ctx

    def _txn_view(self, event: Mapping[str, Any]) -> dict[str, Any]:
        fields = self._txn_fields
        if fields is None:
            return dict(event)
        return {k: event[k] for k in fields if k in event}

    def _bind(self, ctx: cel.Context, txn: dict[str, Any], feats: dict[str, float]) -> None:
        try:
            ctx.add_variable("txn", txn)
        except Exception:
            # A value CEL cannot represent: drop it, as if the field were absent.
            ctx.add_variable("txn", {k: v for k, v in txn.items() if _convertible(v)})
        ctx.add_variable("f", feats)

    def _count_error(self, rule_id: str, n: int = 1) -> None:
        self.evaluation_errors += n
        self.evaluation_errors_by_rule[rule_id] += n

    def evaluate_batch(
        self,
        events: Sequence[Mapping[str, Any]],
        features: npt.NDArray[np.float64],
        feature_names: Sequence[str],
    ) -> list[list[RuleHit]]:
        """For each event, the rules that fired, in evaluation order.

        ``features`` is the batch's (n, len(feature_names)) matrix. A rule that raises for an
        event (missing field, wrong type, NaN ordering) does not fire and is counted in
        ``evaluation_errors``.
        """
        n = len(events)
        out: list[list[RuleHit]] = [[] for _ in range(n)]
        if not self._active or n == 0:
            return out
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] != n or x.shape[1] != len(feature_names):
            msg = (
                f"features has shape {x.shape}, expected ({n}, {len(feature_names)}) "
                "for the batch's events and feature names"
            )
            raise ValueError(msg)
        self._maybe_refresh_lists()
        env = Env(events, x, self._feature_index(feature_names), self._txn_types, self._members)
        fired = np.zeros((len(self._active), n), dtype=bool)
        per_row: dict[int, list[int]] = {}
        everywhere: list[int] = []
        for k, cr in enumerate(self._active):
            vp = self._vector[k]
            if vp is not None:
                try:
                    fires, err, odd = vp.run(env)
                except Exception:  # a bug in the column evaluator must not lose the rule
                    log.exception("vectorised rule %s failed; using CEL per event", cr.rule.id)
                    self._vector[k] = None
                    self.per_event_rules[cr.rule.id] = "vectorised evaluation failed"
                else:
                    fired[k] = fires
                    errors = int(np.count_nonzero(err))
                    if errors:
                        self._count_error(cr.rule.id, errors)
                    if odd.any():
                        for i in np.flatnonzero(odd).tolist():
                            per_row.setdefault(i, []).append(k)
                    continue
            everywhere.append(k)
        if everywhere or per_row:
            self._run_cel(events, x, feature_names, fired, everywhere, per_row)
        hits = self._hits
        for k in range(len(self._active)):
            row = fired[k]
            if row.any():
                hit = hits[k]
                for i in np.flatnonzero(row).tolist():
                    out[i].append(hit)
        return out

    def _run_cel(
        self,
        events: Sequence[Mapping[str, Any]],
        x: npt.NDArray[np.float64],
        feature_names: Sequence[str],
        fired: npt.NDArray[np.bool_],
        everywhere: list[int],
        per_row: dict[int, list[int]],
    ) -> None:
        """Per-event CEL for rules outside the vectorised subset and for odd rows."""
        names, idx = self._columns(feature_names)
        rows = range(len(events)) if everywhere else sorted(per_row)
        ctx = self._context()
        active = self._active
        for i in rows:
            extra = per_row.get(i)
            ks = everywhere if extra is None else sorted({*everywhere, *extra})
            feats = dict(zip(names, x[i, idx].tolist(), strict=True)) if names else {}
            self._bind(ctx, self._txn_view(events[i]), feats)
            for k in ks:
                cr = active[k]
                try:
                    result = cr.program.execute(ctx)
                except Exception:
                    self._count_error(cr.rule.id)
                    continue
                if result is True:
                    fired[k, i] = True
                elif result is not False:
                    self._count_error(cr.rule.id)

    def evaluate(self, event: Mapping[str, Any], features: Mapping[str, float]) -> list[RuleHit]:
        """The rules that fire for one event with named features (fixtures, tests, backtests)."""
        names = list(features)
        x = np.array([[float(features[k]) for k in names]], dtype=np.float64).reshape(1, len(names))
        return self.evaluate_batch([event], x, names)[0]

    def evaluate_batch_cel(
        self,
        events: Sequence[Mapping[str, Any]],
        features: npt.NDArray[np.float64],
        feature_names: Sequence[str],
    ) -> list[list[RuleHit]]:
        """The reference: every rule per event through CEL (tests and benchmarks compare)."""
        n = len(events)
        x = np.asarray(features, dtype=np.float64).reshape(n, len(feature_names))
        fired = np.zeros((len(self._active), n), dtype=bool)
        if n and self._active:
            self._run_cel(events, x, feature_names, fired, list(range(len(self._active))), {})
        out: list[list[RuleHit]] = [[] for _ in range(n)]
        for k in range(len(self._active)):
            for i in np.flatnonzero(fired[k]).tolist():
                out[i].append(self._hits[k])
        return out
