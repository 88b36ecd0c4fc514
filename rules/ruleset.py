"""A validated, versioned rule set and its batch evaluation.

Conditions are compiled once (by :mod:`rules.loader`); evaluation builds one CEL context per
batch and, per event, hands CEL only the transaction fields and features the rules refer to
(converting a Python value into CEL costs about a microsecond per map entry, so this is most of
the evaluation time).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import cel
import numpy as np
import numpy.typing as npt

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
    """

    def __init__(
        self,
        version: str,
        rules: Sequence[CompiledRule],
        lists: Mapping[str, list[Any]],
        txn_fields: frozenset[str] | None,
        feature_refs: frozenset[str] | None,
        files: Sequence[str] = (),
    ) -> None:
        self._version = version
        self._all = tuple(rules)
        self._active = tuple(r for r in rules if r.rule.enabled)
        self._lists = {k: list(v) for k, v in lists.items()}
        self._txn_fields = None if txn_fields is None else tuple(sorted(txn_fields))
        self._feature_refs = feature_refs
        self.files = tuple(files)
        #: Rule evaluations that raised (missing field, type error...) and so did not fire.
        self.evaluation_errors = 0
        #: The same, by rule id.
        self.evaluation_errors_by_rule: Counter[str] = Counter()
        self._columns_cache: dict[tuple[str, ...], tuple[list[str], list[int]]] = {}

    @property
    def version(self) -> str:
        """Content hash of the rule files (12 hex digits)."""
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

    def _new_context(self) -> cel.Context:
        ctx = cel.Context()
        if self._lists:
            ctx.add_variable("lists", self._lists)
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

    def _run(self, ctx: cel.Context, hits: list[RuleHit]) -> None:
        for cr in self._active:
            try:
                result = cr.program.execute(ctx)
            except Exception:
                self._count_error(cr.rule.id)
                continue
            if result is True:
                hits.append(cr.hit)
            elif result is not False:
                self._count_error(cr.rule.id)

    def _count_error(self, rule_id: str) -> None:
        self.evaluation_errors += 1
        self.evaluation_errors_by_rule[rule_id] += 1

    def evaluate_batch(
        self,
        events: Sequence[Mapping[str, Any]],
        features: npt.NDArray[np.float64],
        feature_names: Sequence[str],
    ) -> list[list[RuleHit]]:
        """For each event, the rules that fired, in evaluation order.

        ``features`` is the batch's (n, len(feature_names)) matrix. A rule that raises for an
        event (missing field, wrong type) does not fire and is counted in ``evaluation_errors``.
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
        names, idx = self._columns(feature_names)
        rows: list[list[float]] = x[:, idx].tolist() if names else [[] for _ in range(n)]
        ctx = self._new_context()
        for i, event in enumerate(events):
            self._bind(ctx, self._txn_view(event), dict(zip(names, rows[i], strict=True)))
            self._run(ctx, out[i])
        return out

    def evaluate(self, event: Mapping[str, Any], features: Mapping[str, float]) -> list[RuleHit]:
        """The rules that fire for one event with named features (fixtures, tests, backtests)."""
        names = list(features)
        x = np.array([[float(features[k]) for k in names]], dtype=np.float64).reshape(1, len(names))
        return self.evaluate_batch([event], x, names)[0]
