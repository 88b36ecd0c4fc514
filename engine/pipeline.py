"""The scoring pipeline as a plain library: a batch of validated transactions in, decisions out.

No Faust and no Kafka here: the worker, replay, training and most tests run this same code, which
is what keeps live and replayed decisions identical. Every stage works on the whole batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.policy import ALLOW, Policy
from engine.protocols import (
    BatchScorer,
    BoolArray,
    Deferred,
    FeatureStore,
    FloatArray,
    IntArray,
    OnlineLearner,
    OnlineScorer,
    RuleSetLike,
)
from features.transaction import TRANSACTION_FEATURE_NAMES, transaction_features

log = logging.getLogger(__name__)

STAGES = ("decode", "features", "rules", "model", "online", "emit", "flush")


@dataclass(slots=True)
class Decision:
    """What the engine decided about one transaction, and why (the ``scores`` record)."""

    event_id: str
    card_id: str
    ts: int
    amount: float
    score: float
    decision: str
    reasons: list[str]
    rule_set: str
    model: str
    shadow: dict[str, float]
    mode: str = "normal"
    contributions: list[dict[str, Any]] = field(default_factory=list)
    scored_at: float = 0.0
    latency_ms: float = 0.0

    def to_record(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "card_id": self.card_id,
            "ts": self.ts,
            "scored_at": self.scored_at,
            "score": self.score,
            "decision": self.decision,
            "reasons": self.reasons,
            "rule_set": self.rule_set,
            "model": self.model,
            "shadow": self.shadow,
            "mode": self.mode,
            "contributions": self.contributions,
            "amount": self.amount,
            "latency_ms": self.latency_ms,
        }


@dataclass(slots=True)
class ScoredBatch:
    """Decisions of one batch, with the feature matrix they were made from and stage timings."""

    decisions: list[Decision]
    features: FloatArray
    feature_names: list[str]
    stage_seconds: dict[str, float]
    #: Rows whose event id an earlier batch had already counted (see FeatureStore.redelivered).
    redelivered: BoolArray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def without(self, drop: BoolArray) -> ScoredBatch:
        """The batch less the rows in ``drop``."""
        keep = np.flatnonzero(~drop)
        return ScoredBatch(
            [self.decisions[i] for i in keep.tolist()],
            self.features[keep],
            self.feature_names,
            self.stage_seconds,
            self.redelivered[keep],
        )


@dataclass
class PendingFeatures:
    """A batch's windowed features on their way, and its own (stateless) features."""

    windowed: Deferred[FloatArray]
    own: FloatArray

    def result(self) -> FloatArray:
        return np.hstack((self.windowed.result(), self.own))


@dataclass
class PendingScore:
    """A batch whose feature update is on its way; ``result()`` reads it and scores the batch."""

    pipeline: Pipeline
    records: Sequence[dict[str, Any]]
    features: PendingFeatures
    submit_seconds: float

    def result(self) -> ScoredBatch:
        t0 = time.perf_counter()
        x = self.features.result()
        store = self.pipeline.features
        redelivered = np.array(store.redelivered, dtype=bool)
        timings = {"features": self.submit_seconds + time.perf_counter() - t0}
        scored = self.pipeline.decide_batch(
            self.records, x, self.pipeline.feature_names, timings
        )
        scored.redelivered = redelivered
        return scored


class Pipeline:
    """features → rules → champion model (+ online model, shadows) → policy, for a whole batch."""

    def __init__(
        self,
        features: FeatureStore,
        rules: RuleSetLike,
        policy: Policy,
        champion: BatchScorer | None = None,
        online: OnlineLearner | None = None,
        shadows: Sequence[BatchScorer] = (),
        anomaly: OnlineScorer | None = None,
    ) -> None:
        self.features = features
        self.rules = rules
        self.policy = policy
        self.champion = champion
        self.online = online
        self.shadows = list(shadows)
        self.anomaly = anomaly
        self._names = [*features.feature_names, *TRANSACTION_FEATURE_NAMES]
        self._pool: ThreadPoolExecutor | None = None

    def _model_thread(self) -> ThreadPoolExecutor:
        """The champion's thread (started on first use: a pipeline may be built and never run)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="champion")
        return self._pool

    @property
    def feature_names(self) -> list[str]:
        """Columns of the feature matrix: the store's windowed features, then the event's own."""
        return list(self._names)

    def score_batch(self, records: Sequence[dict[str, Any]]) -> ScoredBatch:
        """Score validated records (as :func:`engine.schemas.decode_batch` produces them)."""
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        event_ids, ts_ms, amounts, entities = self._inputs(records)
        x = np.hstack(
            (
                self.features.update_batch(event_ids, ts_ms, amounts, entities),
                transaction_features(ts_ms, amounts),
            )
        )
        redelivered = np.array(self.features.redelivered, dtype=bool)
        timings["features"] = time.perf_counter() - t0
        scored = self.decide_batch(records, x, self.feature_names, timings)
        scored.redelivered = redelivered
        return scored

    def submit_batch(self, records: Sequence[dict[str, Any]]) -> PendingScore:
        """:meth:`score_batch` in two halves: the feature update is sent now, scoring happens in
        ``result()``. The live worker sends the next batch's update before it scores this one, so
        Redis applies it while Python works (batches are applied in the order they are sent)."""
        t0 = time.perf_counter()
        pending = self.submit_features(*self._inputs(records))
        return PendingScore(self, records, pending, time.perf_counter() - t0)

    def _inputs(
        self, records: Sequence[dict[str, Any]]
    ) -> tuple[list[str], IntArray, FloatArray, dict[str, list[str]]]:
        """The feature store's inputs, column by column."""
        n = len(records)
        event_ids = [r["event_id"] for r in records]
        ts_ms = np.fromiter((r["ts"] for r in records), dtype=np.int64, count=n)
        amounts = np.fromiter((r["amount"] for r in records), dtype=np.float64, count=n)
        entities = {f: [_text(r.get(f)) for r in records] for f in self.features.entity_fields}
        return event_ids, ts_ms, amounts, entities

    def submit_features(
        self,
        event_ids: Sequence[str],
        ts_ms: IntArray,
        amounts: FloatArray,
        entities: Mapping[str, Sequence[str]],
    ) -> PendingFeatures:
        """The feature matrix :meth:`score_batch` computes, sent now and read later (replays and
        backtests submit the next batch before reading this one). ``entities`` holds the
        :attr:`FeatureStore.entity_fields` as text ('' when missing)."""
        return PendingFeatures(
            self.features.submit_batch(event_ids, ts_ms, amounts, entities),
            transaction_features(ts_ms, amounts),
        )

    def decide_batch(
        self,
        records: Sequence[dict[str, Any]],
        x: FloatArray,
        names: Sequence[str],
        timings: dict[str, float] | None = None,
    ) -> ScoredBatch:
        """Rules, models and policy over features already computed (live, or a backtest that
        computed the feature log once and scores it with a model trained afterwards)."""
        timings = {} if timings is None else timings
        t1 = time.perf_counter()
        # LightGBM's predict is C that releases the GIL: it runs on a second thread while this
        # one evaluates the rules and the online models (Python), the largest overlap a batch
        # offers; "model" is then only the wait for it after those. This thread waits until
        # the other one runs: a thread asking for the GIL held by busy Python waits out the
        # switch interval (5 ms) first.
        running = threading.Event()

        def champion_scores() -> tuple[FloatArray, str, str, BatchScorer | None]:
            running.set()
            return self._champion_scores(x, names)

        champion = self._model_thread().submit(champion_scores)
        running.wait()
        event_ids = [r["event_id"] for r in records]
        rules = self.rules  # read once: a hot reload between two reads cannot mix rule sets
        hits = rules.evaluate_batch(records, x, names)
        t2 = time.perf_counter()
        timings["rules"] = t2 - t1
        shadow: dict[str, FloatArray] = {}
        for side in (self.online, self.anomaly):
            if side is None:
                continue
            try:
                shadow[side.version] = side.score_batch(x)
            except Exception:  # side models never take the batch down
                log.exception("model %s failed", side.version)
        t3 = time.perf_counter()
        timings["online"] = t3 - t2

        scores, model_version, mode, explain = champion.result()
        for s in self.shadows:
            try:
                shadow[s.version] = s.score_batch(_columns(x, names, s.feature_names))
            except Exception:  # a shadow never takes the batch down
                log.exception("shadow %s failed", s.version)
        t4 = time.perf_counter()
        timings["model"] = t4 - t3

        decisions: list[Decision] = []
        rule_set = rules.version
        decide = self.policy.decide
        # columns as Python lists once (numpy scalars per event cost more than the loop)
        score_list = np.asarray(scores, dtype=np.float64).tolist()
        shadow_cols = [(v, np.asarray(a, dtype=np.float64).tolist()) for v, a in shadow.items()]
        kind = "normal" if mode == "normal" else "degraded"
        for i, rec in enumerate(records):
            score = score_list[i]
            decision, reasons = decide(score, hits[i])
            if mode != "normal":
                reasons.append(mode)
            decisions.append(
                Decision(
                    event_ids[i], rec["card_id"], int(rec["ts"]), float(rec["amount"]), score,
                    decision, reasons, rule_set, model_version,
                    {v: col[i] for v, col in shadow_cols}, kind,
                )
            )  # fmt: skip
        t5 = time.perf_counter()
        timings["rules"] += t5 - t4  # the policy: rule actions and thresholds, per event
        if explain is not None:
            self._explain(decisions, explain, x, names)
        timings["model"] += time.perf_counter() - t5  # contributions of review/block rows
        return ScoredBatch(decisions, x, list(names), timings, np.zeros(len(decisions), bool))

    def _champion_scores(
        self, x: FloatArray, names: Sequence[str]
    ) -> tuple[FloatArray, str, str, BatchScorer | None]:
        """Champion scores, or zeros with a degraded reason; never raises."""
        champion = self.champion
        if champion is None:
            return np.zeros(len(x)), "none", "degraded:model_unavailable", None
        try:
            cols = _columns(x, names, champion.feature_names)
        except KeyError as exc:
            log.error("champion %s needs features the store lacks: %s", champion.version, exc)
            return np.zeros(len(x)), champion.version, "degraded:feature_mismatch", None
        try:
            return champion.score_batch(cols), champion.version, "normal", champion
        except Exception:
            log.exception("champion %s failed to score; rules only", champion.version)
            return np.zeros(len(x)), champion.version, "degraded:model_error", None

    @staticmethod
    def _explain(
        decisions: list[Decision], model: BatchScorer, x: FloatArray, names: Sequence[str]
    ) -> None:
        """Top-3 contributions on review/block decisions only (pred_contrib is not free)."""
        idx = [i for i, d in enumerate(decisions) if d.decision != ALLOW]
        if not idx:
            return
        try:
            tops = model.explain_batch(_columns(x[idx], names, model.feature_names), top=3)
        except Exception:
            log.exception("explanations failed for model %s", model.version)
            return
        for i, top in zip(idx, tops, strict=True):
            d = decisions[i]
            d.contributions = [{"feature": f, "value": v, "contribution": c} for f, v, c in top]
            d.reasons.extend(f"model:{f}" for f, _, c in top if c > 0)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


def _columns(x: FloatArray, have: Sequence[str], want: Sequence[str]) -> FloatArray:
    """``x`` with its columns reordered from ``have`` to ``want`` (KeyError if one is missing)."""
    if list(have) == list(want):
        return x
    pos = {n: i for i, n in enumerate(have)}
    missing = [n for n in want if n not in pos]
    if missing:
        raise KeyError(", ".join(missing))
    return x[:, [pos[n] for n in want]]
