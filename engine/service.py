"""The scoring service: decode → pipeline → emit, per topic, for one batch of raw messages.

Agents hand it raw batches and do nothing else; replay and the benchmarks call it directly with a
:class:`~engine.sinks.MemorySink`. A batch method either finishes (all outputs flushed, so the
caller may ack) or raises (the caller must retry and not ack).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import redis

from engine import metrics
from engine.drift import DriftTracker
from engine.pipeline import Decision, PendingScore, Pipeline, ScoredBatch
from engine.policy import REVIEW
from engine.protocols import FloatArray
from engine.review.store import QUEUE_KEY, case_commands, history_command
from engine.schemas import (
    ACCOUNT_EVENT,
    DUPLICATE,
    LABEL,
    TRANSACTION,
    DeadLetter,
    Decoded,
    RawMessage,
    decode_batch,
    processing_failures,
)
from engine.settings import Settings
from engine.sinks import KafkaSink, MemorySink, NullSink
from features import resp
from models.evaluation import RollingEvaluator
from rules.reload import RuleSetWatcher

log = logging.getLogger(__name__)

FEATURE_LOG_PREFIX = "rs:fv:"
#: Scores of every model version at scoring time, for online evaluation when the label arrives.
SCORE_LOG_PREFIX = "rs:sv:"
#: The decision record as sent, to answer a redelivery with the same bytes (see README).
DECISION_MEMO_PREFIX = "rs:dm:"
#: The batch's decision log in one call: per event ``SET fv:<id> <its feature row> EX ttl``,
#: ``SET sv:<id> <its score record> EX ttl`` and ``SET dm:<id> <the decision as sent> EX memo
#: ttl``, then the labels parked for these events (HMGET). Whole columns travel as a few
#: arguments (ids as a JSON array, the feature matrix as one blob of fixed-width rows, records
#: as blobs cut by JSON arrays of lengths): redis-py spends ~1.5 µs packing each argument, and
#: this is the hot path.
_LOG_BATCH = """
local ttl = tonumber(ARGV[1])
local fv, sv, width = ARGV[2], ARGV[3], tonumber(ARGV[4])
local ids = cjson.decode(ARGV[5])
local rows, recs = ARGV[6], ARGV[8]
local lens = cjson.decode(ARGV[7])
local dm, memo_ttl, memos, mlens = ARGV[10], tonumber(ARGV[11]), ARGV[13], cjson.decode(ARGV[12])
local at, mat = 1, 1
for i = 1, #ids do
  redis.call('SET', fv .. ids[i], string.sub(rows, (i - 1) * width + 1, i * width), 'EX', ttl)
  redis.call('SET', sv .. ids[i], string.sub(recs, at, at + lens[i] - 1), 'EX', ttl)
  redis.call('SET', dm .. ids[i], string.sub(memos, mat, mat + mlens[i] - 1), 'EX', memo_ttl)
  at = at + lens[i]
  mat = mat + mlens[i]
end
local found = {}
for a = 1, #ids, 4000 do
  local part = {}
  for i = a, math.min(a + 3999, #ids) do part[#part + 1] = ids[i] end
  local got = redis.call('HMGET', ARGV[9], unpack(part))
  for i = 1, #part do
    if got[i] then found[#found + 1] = got[i] end
  end
end
return found
"""
LABEL_SEEN_PREFIX = "rs:label:"
#: Labels whose transaction was not scored yet (field = event_id, value = the label as JSON).
PENDING_LABELS = "rs:labels:pending"


@dataclass
class BatchReport:
    """What one batch did (also what the demo and bench add up)."""

    valid: int = 0
    dead: int = 0
    decisions: dict[str, int] = field(default_factory=dict)
    scored: ScoredBatch | None = None
    latencies: list[float] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    learned: int = 0
    #: transactions an earlier batch had already counted (answered again or dead-lettered)
    redelivered: int = 0


@dataclass
class StartedBatch:
    """A transactions batch decoded, its feature update sent (``scoring``; None if no record is
    valid): what :meth:`ScoringService.finish_transactions` completes."""

    decoded: Decoded
    scoring: PendingScore | None
    decode_seconds: float


@dataclass
class _Writes:
    """A batch's Redis writes still on their way, and the labels parked for its events."""

    sent: resp.Sent
    parked: list[bytes | None]


def _as_bytes(value: bytes | str) -> bytes:
    return value.encode("latin-1") if isinstance(value, str) else value


def _score_record(d: Decision) -> dict[str, Any]:
    """What online evaluation needs when the label arrives: each version's score and flag."""
    scores = dict(d.shadow)
    if d.mode == "normal":  # a degraded 0.0 is not a model score
        scores[d.model] = d.score
    return {"scores": scores, "flagged": {d.model: d.decision != "allow"}}


class ScoringService:
    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline,
        client: redis.Redis,
        sink: KafkaSink | MemorySink | NullSink,
        feature_log_ttl_seconds: int = 30 * 86400,
        live: bool = True,
        rules_watcher: RuleSetWatcher | None = None,
        redelivery: str = "dead_letter",
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.redis = client
        self.sink = sink
        self.feature_log_ttl = feature_log_ttl_seconds
        #: A live service queues review cases and records feature vectors for labels; a warm-up
        #: or backtest replay (live=False) only advances the feature state and emits decisions.
        self.live = live
        #: What a replay (live=False) does with a transaction an earlier batch counted:
        #: "dead_letter" (a repeated row: one decision per event id) or "rescore" (a resumed
        #: replay re-reading batches whose decisions were not saved). A live service always
        #: answers from its decision memo.
        if redelivery not in ("dead_letter", "rescore"):
            msg = f"redelivery must be dead_letter or rescore, not {redelivery!r}"
            raise ValueError(msg)
        self.redelivery = redelivery
        self.rules_watcher = rules_watcher
        self._msetex: bool | None = None  # the server has MSETEX (asked on first use)
        self.evaluator = RollingEvaluator(5000, settings.review_threshold)
        self._bad_shadows: set[str] = set()
        self._late_seen = 0
        self._models_checked = 0.0
        self._champion_version = pipeline.champion.version if pipeline.champion else None
        #: Drift statistics of live traffic (engine/drift.py); None in replays and training.
        self.drift: DriftTracker | None = None

    # -- transactions -------------------------------------------------------------------------

    def process_transactions(self, messages: Sequence[RawMessage]) -> BatchReport:
        """Decode, score and emit one batch; returns once every output is durable."""
        return self.finish_transactions(self.start_transactions(messages))

    def start_transactions(self, messages: Sequence[RawMessage]) -> StartedBatch:
        """The first half of :meth:`process_transactions`: decode, and send the feature update
        (Redis applies it while the caller finishes the batch before). Nothing is emitted."""
        t0 = time.perf_counter()
        decoded = decode_batch(messages, TRANSACTION, self.settings.max_payload_bytes)
        t1 = time.perf_counter()
        pending = None
        if decoded.records:
            self._fault_injection(decoded.records, "decode")
            pending = self.pipeline.submit_batch(decoded.records)
        return StartedBatch(decoded, pending, t1 - t0)

    def finish_transactions(self, started: StartedBatch) -> BatchReport:
        """The second half: score, emit, flush, write the logs; raises if any of it failed (the
        batch must then be processed again, from its messages)."""
        decoded = started.decoded
        report = BatchReport(valid=len(decoded.records), dead=len(decoded.dead))
        scored: ScoredBatch | None = None
        records, arrived_at, dead = decoded.records, decoded.arrived_at, list(decoded.dead)
        answered: dict[int, bytes] = {}
        if started.scoring is not None:
            scored = started.scoring.result()
            self._fault_injection(records, "score")
            if scored.redelivered.any():
                scored, records, arrived_at, answered = self._redeliveries(
                    scored, decoded, dead, report
                )
        t2 = time.perf_counter()
        self.emit_dead(dead, self.settings.topic_transactions)
        writes = None
        if scored is not None and scored.decisions:
            writes = self._emit_decisions(scored, records, arrived_at, report, answered)
        t3 = time.perf_counter()
        try:
            self.sink.flush()
        except BaseException:
            if writes is not None:
                writes.sent.discard()
            raise
        now = time.time()  # the decisions are durable now: the latency clock stops here
        t4 = time.perf_counter()
        try:
            late = self.pipeline.features.late_events
            if late > self._late_seen:
                metrics.LATE_EVENTS.inc(late - self._late_seen)
                self._late_seen = late
            # what learns and is monitored sees each event id once: a redelivery is left out
            fresh = None
            if scored is not None:
                fresh = scored.without(scored.redelivered) if scored.redelivered.any() else scored
            anomaly = self.pipeline.anomaly
            if fresh is not None and anomaly is not None and fresh.decisions:
                anomaly.learn_batch(fresh.features)  # unsupervised: after scoring, never before
            t5 = time.perf_counter()
            if fresh is not None and self.drift is not None:  # after the decisions went out
                self.drift.observe_batch(fresh)
                report.stage_seconds["drift"] = time.perf_counter() - t5
        except BaseException:
            if writes is not None:
                writes.sent.discard()
            raise
        t6 = time.perf_counter()
        if writes is not None:  # the logs, memos and cases: durable before the caller commits
            self._writes_done(writes, report)
        t7 = time.perf_counter()
        if scored is not None:
            report.scored = scored
            report.latencies = [now - a for a in arrived_at]
            metrics.observe_many(metrics.DECISION_LATENCY, report.latencies)
            report.stage_seconds.update(scored.stage_seconds)
        stages = report.stage_seconds
        stages["decode"] = started.decode_seconds
        stages["emit"] = t3 - t2 + t7 - t6
        stages["flush"] = t4 - t3
        stages["online"] = stages.get("online", 0.0) + (t5 - t4)
        for stage, secs in stages.items():
            metrics.STAGE_SECONDS.labels(stage).observe(secs)
        topic = self.settings.topic_transactions
        metrics.EVENTS.labels(topic, "valid").inc(report.valid)
        metrics.EVENTS.labels(topic, "invalid").inc(report.dead)
        if report.redelivered:
            metrics.EVENTS.labels(topic, "redelivered").inc(report.redelivered)
        return report

    def _fault_injection(self, records: list[dict[str, Any]], stage: str) -> None:
        """The fault suite's poison message (settings ``fault_poison_*``; off by default)."""
        poison = self.settings.fault_poison_prefix
        if poison and stage == self.settings.fault_poison_stage:
            if any(str(r["event_id"]).startswith(poison) for r in records):
                msg = f"fault injection: a poison transaction in stage {stage}"
                raise RuntimeError(msg)

    def _redeliveries(
        self,
        scored: ScoredBatch,
        decoded: Decoded,
        dead: list[DeadLetter],
        report: BatchReport,
    ) -> tuple[ScoredBatch, list[dict[str, Any]], list[float], dict[int, bytes]]:
        """Transactions an earlier batch had already counted (Kafka redelivered them, or a file
        repeats them): the exactly-once effect for their outputs.

        A live service answers with the decision it made the first time, byte for byte, from the
        decision memo (``rs:dm:``, kept ``redelivery_memo_seconds``, and ``rs:fv:``); only when the
        first attempt failed before its memo was written (a crash between the feature update and
        the emit) is the event scored now, from a state that already counts it once. A replay
        (``redelivery="dead_letter"``) dead-letters them as ``duplicate_event_id``, as it does a
        copy within one batch: one decision per event id in its decision log. Returns the batch,
        its records and arrival times (less the dead-lettered rows) and the rows answered from
        their memo (row -> the bytes first sent: no review case, no memo write, no count).
        """
        red = scored.redelivered
        idx = np.flatnonzero(red).tolist()
        report.redelivered = len(idx)
        records, arrived = decoded.records, decoded.arrived_at
        if not self.live and self.redelivery == "dead_letter":
            for i in idx:
                eid = str(records[i]["event_id"])[:64]
                detail = f"event_id already counted by an earlier batch ({eid}): not scored again"
                dead.append(DeadLetter(DUPLICATE, detail, decoded.sources[i]))
            report.valid -= len(idx)
            report.dead += len(idx)
            keep = [i for i in range(len(records)) if not red[i]]
            scored = scored.without(red)
            return scored, [records[i] for i in keep], [arrived[i] for i in keep], {}
        answered: dict[int, bytes] = {}
        if not self.live:
            return scored, records, arrived, answered
        ids = [scored.decisions[i].event_id for i in idx]
        memos = self.redis.mget(
            [DECISION_MEMO_PREFIX + e for e in ids] + [FEATURE_LOG_PREFIX + e for e in ids]
        )
        width = scored.features.shape[1]
        for k, i in enumerate(idx):
            memo, vector = memos[k], memos[len(ids) + k]
            if memo is None or vector is None:
                continue
            row = np.frombuffer(_as_bytes(vector), dtype=np.float64)
            if len(row) != width:
                continue
            scored.decisions[i] = Decision(**orjson.loads(memo))
            scored.features[i] = row
            answered[i] = _as_bytes(memo)
        return scored, records, arrived, answered

    def _emit_decisions(
        self,
        scored: ScoredBatch,
        records: Sequence[dict[str, Any]],
        arrived_at: Sequence[float],
        report: BatchReport,
        answered: dict[int, bytes],
    ) -> _Writes:
        """Remember every decision, then send it (a redelivery answered from its memo:
        ``answered``, row -> the bytes first sent).

        The feature log, the decision memos and the new review cases are confirmed by Redis
        *before* the first decision is produced: librdkafka delivers in the background as soon as
        ``send`` is called, so a worker killed after a decision left and before its memo was
        written would answer the redelivery with a second, different decision (same features,
        another ``scored_at``; the fault suite's SIGKILL scenario saw it). The history and the
        queue depth go in a second round trip, packed and sent while Redis applies the first,
        whose replies :meth:`_writes_done` reads after the sink's flush (Redis and the broker
        work at the same time). Should the first fail after the second was sent, the retried
        batch appends its history entries again (a display list; nothing is decided from it)."""
        s = self.settings
        send = self.sink.send
        dumps = orjson.dumps
        now = time.time()
        cases: list[dict[str, Any]] = []
        decisions = scored.decisions
        x = np.ascontiguousarray(scored.features, dtype=np.float64)
        live = self.live
        topic, review_topic = s.topic_scores, s.topic_review
        sent: list[bytes] = []  # each decision as sent (a memo keeps the same bytes)
        for i, d in enumerate(decisions):
            out = answered.get(i) if answered else None
            if out is None:
                d.scored_at = now
                d.latency_ms = (now - arrived_at[i]) * 1000.0
                out = dumps(d)  # the dataclass is the scores record
            sent.append(out)
        # a redelivery answered from its memo has its case, counts and logs already
        fresh = [i for i in range(len(decisions)) if i not in answered] if answered else None
        new = decisions if fresh is None else [decisions[i] for i in fresh]
        counts = Counter(d.decision for d in new)
        if live and counts.get(REVIEW):
            for i in range(len(decisions)) if fresh is None else fresh:
                d = decisions[i]
                if d.decision != REVIEW:
                    continue
                txn = records[i]
                # A case a rule raised is at least as likely as one at the review threshold,
                # so rules-only cases (score 0 in degraded mode) still rank by amount.
                p_fraud = max(d.score, s.review_threshold)
                cases.append({
                    **d.to_record(),
                    "expected_loss": p_fraud * d.amount,
                    "merchant_id": txn.get("merchant_id"),
                    "transaction": txn,
                    "features": dict(zip(scored.feature_names, x[i].tolist(), strict=True)),
                })  # fmt: skip
        remember: list[bytes] = []
        if live and new:
            rows = x if fresh is None else x[fresh]
            memos = sent if fresh is None else [sent[i] for i in fresh]
            logged = [dumps(_score_record(d)) for d in new]
            remember += self._log_commands(new, rows, logged, memos)
        remember += [resp.command(*c) for c in case_commands(cases)]
        first = resp.Sent(self.redis, remember, len(remember)) if remember else None
        rest: list[bytes] = []
        if live and new:  # the case page's card and merchant history
            txns = records if fresh is None else [records[i] for i in fresh]
            rest.append(history_command(new, txns))
        rest.append(resp.command("ZCARD", QUEUE_KEY))
        try:
            second = resp.Sent(self.redis, rest, len(rest))
        except BaseException:
            if first is not None:
                first.discard()
            raise
        parked: list[bytes | None] = []
        if first is not None:
            try:
                replies = first.replies()
            except BaseException:
                second.discard()
                raise
            if live and new:
                parked = replies[3 if self._has_msetex() else 0]
        for d, out in zip(decisions, sent, strict=True):
            send(topic, d.card_id.encode(), out)
        for case in cases:
            send(review_topic, case["card_id"].encode(), dumps(case))
        for decision, n in counts.items():
            metrics.DECISIONS.labels(decision).inc(n)
        degraded = [d for d in new if d.mode != "normal"]
        if degraded:  # a batch is degraded as a whole: one reason, appended last by the pipeline
            reason = degraded[0].reasons[-1].split(":", 1)[-1]
            metrics.DEGRADED_DECISIONS.labels(reason).inc(len(degraded))
        report.decisions = dict(counts)
        return _Writes(second, parked)

    def _has_msetex(self) -> bool:
        if self._msetex is None:
            self._msetex = resp.supports(self.redis, "MSETEX")
            if not self._msetex:
                log.info("no MSETEX on this server: the decision log is written by a script")
        return self._msetex

    def _log_commands(
        self, new: Sequence[Decision], rows: FloatArray, logged: list[bytes], memos: list[bytes]
    ) -> list[bytes]:
        """The decision log of a batch (feature rows, score records, decision memos) and the
        look-up of labels parked for its events (last)."""
        s = self.settings
        ids = [d.event_id for d in new]
        if self._has_msetex():
            width = rows.shape[1] * 8
            blob = np.ascontiguousarray(rows, dtype=np.float64).tobytes()
            vectors = [blob[k : k + width] for k in range(0, len(blob), width)]
            ttl = self.feature_log_ttl
            return [
                resp.msetex(FEATURE_LOG_PREFIX, ids, vectors, ttl),
                resp.msetex(SCORE_LOG_PREFIX, ids, logged, ttl),
                resp.msetex(DECISION_MEMO_PREFIX, ids, memos, s.redelivery_memo_seconds),
                resp.command("HMGET", PENDING_LABELS, *ids),
            ]
        dumps = orjson.dumps
        return [
            resp.command(
                "EVAL", _LOG_BATCH, 0,
                self.feature_log_ttl, FEATURE_LOG_PREFIX, SCORE_LOG_PREFIX,
                rows.shape[1] * 8, dumps(ids), rows.tobytes(),
                dumps([len(v) for v in logged]), b"".join(logged), PENDING_LABELS,
                DECISION_MEMO_PREFIX, s.redelivery_memo_seconds,
                dumps([len(v) for v in memos]), b"".join(memos),
            )
        ]  # fmt: skip

    def _writes_done(self, writes: _Writes, report: BatchReport) -> None:
        """Wait for a batch's Redis writes; apply the labels that were waiting for its events."""
        replies = writes.sent.replies()
        metrics.REVIEW_QUEUE_DEPTH.set(replies[-1])
        if writes.parked:
            self._apply_pending([orjson.loads(v) for v in writes.parked if v is not None], report)

    def _apply_pending(self, labels: list[dict[str, Any]], report: BatchReport) -> None:
        """Labels that had arrived before these transactions were scored, applied now."""
        if not labels:
            return
        self._learn_labels(labels, report, park_unknown=False)
        self.redis.hdel(PENDING_LABELS, *(r["event_id"] for r in labels))
        metrics.EVENTS.labels(self.settings.topic_labels, "valid").inc(len(labels))

    def emit_dead(self, dead: Sequence[DeadLetter], topic: str) -> None:
        """Send dead letters (counted and logged by reason; the raw value redacted)."""
        send = self.sink.send
        for d in dead:
            send(self.settings.topic_dead_letter, None, orjson.dumps(d.to_record()))
            metrics.DEAD_LETTER.labels(d.reason).inc()
            log.warning(
                "dead letter from %s[%s]@%s: %s",
                topic,
                d.message.partition,
                d.message.offset,
                d.reason,
            )

    def dead_letter_all(self, messages: Sequence[RawMessage], detail: str) -> None:
        """Route a batch that keeps failing to the dead-letter topic, so nothing is lost."""
        dead = processing_failures(messages, detail)
        self.emit_dead(dead, messages[0].topic if messages else "?")
        self.sink.flush()

    # -- account events -----------------------------------------------------------------------

    def process_events(self, messages: Sequence[RawMessage]) -> BatchReport:
        """Validate account events and feed them to the feature store (password changes, new
        devices, login countries ... become transaction features)."""
        decoded = decode_batch(messages, ACCOUNT_EVENT, self.settings.max_payload_bytes)
        self.emit_dead(decoded.dead, self.settings.topic_events)
        recs = decoded.records
        if recs:
            store = self.pipeline.features
            store.update_events_batch(
                [r["event_id"] for r in recs],
                np.fromiter((r["ts"] for r in recs), dtype=np.int64, count=len(recs)),
                [r["type"] for r in recs],
                {f: [str(r.get(f) or "") for r in recs] for f in store.account_event_fields},
            )
        self.sink.flush()
        metrics.EVENTS.labels(self.settings.topic_events, "valid").inc(len(decoded.records))
        metrics.EVENTS.labels(self.settings.topic_events, "invalid").inc(len(decoded.dead))
        return BatchReport(valid=len(decoded.records), dead=len(decoded.dead))

    # -- labels -------------------------------------------------------------------------------

    def process_labels(self, messages: Sequence[RawMessage]) -> BatchReport:
        """Teach the online model each label once, from the features recorded at scoring time.

        A label that arrives before its transaction was scored (the labels topic ran ahead) is
        parked in ``rs:labels:pending`` and applied when the transaction is scored.
        """
        decoded = decode_batch(messages, LABEL, self.settings.max_payload_bytes)
        self.emit_dead(decoded.dead, self.settings.topic_labels)
        report = BatchReport(valid=len(decoded.records), dead=len(decoded.dead))
        topic = self.settings.topic_labels
        if decoded.records:
            duplicates, unknown = self._learn_labels(decoded.records, report, park_unknown=True)
            metrics.EVENTS.labels(topic, "duplicate").inc(duplicates)
            metrics.EVENTS.labels(topic, "pending").inc(unknown)
            metrics.EVENTS.labels(topic, "valid").inc(len(decoded.records) - duplicates - unknown)
        metrics.EVENTS.labels(topic, "invalid").inc(len(decoded.dead))
        self.sink.flush()
        return report

    def _learn_labels(
        self, records: Sequence[dict[str, Any]], report: BatchReport, park_unknown: bool
    ) -> tuple[int, int]:
        """Label features, online model and evaluation for labels of scored transactions;
        returns (duplicates, parked)."""
        ids = [r["event_id"] for r in records]
        # The feature store dedupes labels itself and ignores events it has not seen yet.
        self.pipeline.features.apply_labels_batch(
            ids, [int(r["ts"]) for r in records], [bool(r["is_fraud"]) for r in records]
        )
        if not self.live:  # a replay keeps no feature log: label features are all it needs
            return 0, 0
        vectors = self.redis.mget([FEATURE_LOG_PREFIX + e for e in ids])
        known = [(r, v) for r, v in zip(records, vectors, strict=True) if v is not None]
        unknown = [r for r, v in zip(records, vectors, strict=True) if v is None]
        pipe = self.redis.pipeline(transaction=False)
        for r, _ in known:  # only labels of scored events are marked seen
            pipe.set(LABEL_SEEN_PREFIX + r["event_id"], b"1", nx=True, ex=400 * 86400)
        if park_unknown and unknown:
            pipe.hset(PENDING_LABELS, mapping={r["event_id"]: orjson.dumps(r) for r in unknown})
            pipe.hexpire(PENDING_LABELS, self.feature_log_ttl, *(r["event_id"] for r in unknown))
        replies = pipe.execute() if (known or unknown) else []
        firsts = replies[: len(known)]
        fresh = [(r, v) for (r, v), first in zip(known, firsts, strict=True) if first]
        rows = [np.frombuffer(_as_bytes(v), dtype=np.float64) for _, v in fresh]
        ys = [bool(r["is_fraud"]) for r, _ in fresh]
        self._evaluate([r["event_id"] for r, _ in fresh], ys)
        online = self.pipeline.online
        width = len(self.pipeline.feature_names)
        keep = [k for k, row in enumerate(rows) if len(row) == width]
        if keep and online is not None:
            online.learn_batch(np.vstack([rows[k] for k in keep]), [ys[k] for k in keep])
            report.learned += len(keep)
            metrics.LABELS_LEARNED.inc(len(keep))
        return len(known) - len(fresh), len(unknown)

    def _evaluate(self, event_ids: Sequence[str], labels: Sequence[bool]) -> None:
        """Rolling AP and review precision per model version, from the scores logged at scoring."""
        if not event_ids:
            return
        logged = self.redis.mget([SCORE_LOG_PREFIX + e for e in event_ids])
        pairs = [(orjson.loads(v), y) for v, y in zip(logged, labels, strict=True) if v is not None]
        if not pairs:
            return
        self.evaluator.update_records([p for p, _ in pairs], [y for _, y in pairs])
        if self.drift is not None:
            self.drift.observe_labels([p for p, _ in pairs], [y for _, y in pairs])
        for version, m in self.evaluator.snapshot().items():
            metrics.MODEL_AVERAGE_PRECISION.labels(version).set(m["average_precision"])
            metrics.MODEL_REVIEW_PRECISION.labels(version).set(m["review_precision"])

    def refresh_rules(self) -> bool:
        """Swap in a changed rule set between batches; an invalid one never replaces the old."""
        w = self.rules_watcher
        if w is None:
            return False
        before = w.reload_failures
        changed = w.poll()
        if w.reload_failures > before:
            metrics.RULES_RELOAD_FAILURES.inc(w.reload_failures - before)
        if changed:
            self.pipeline.rules = w.current()
            metrics.RULES_RELOADS.inc()
            log.info("rule set is now %s", self.pipeline.rules.version)
        return changed

    def checkpoint(self) -> None:
        """Save the online models and evaluator so a restarted worker keeps what it learned."""
        d = self.settings.checkpoints_dir
        if self.pipeline.online is not None:
            self.pipeline.online.save(d / "online.pkl")
        if self.pipeline.anomaly is not None:
            self.pipeline.anomaly.save(d / "anomaly.pkl")
        self.evaluator.save(d / "evaluation.json")

    def _refresh_shadows(self, registry: Any, wanted: list[str]) -> None:
        """Load new shadows, drop removed ones; one assignment, between batches."""
        current = self.pipeline.shadows
        if wanted == [s.version for s in current]:
            return
        have = {s.version: s for s in current}
        new = []
        for v in wanted:
            if v in have:
                new.append(have[v])
            elif v not in self._bad_shadows:
                try:
                    new.append(registry.load(v, **self.settings.scorer_options()))
                except Exception:
                    log.exception("shadow %s unreadable; skipped", v)
                    self._bad_shadows.add(v)
        for v in set(have) - {s.version for s in new}:
            metrics.MODEL_INFO.labels(v, "shadow").set(0)
        for s in new:
            metrics.MODEL_INFO.labels(s.version, "shadow").set(1)
        self.pipeline.shadows = new

    # -- models -------------------------------------------------------------------------------

    def refresh_models(self, registry_root: Path, every_seconds: float = 2.0) -> bool:
        """Switch to a newly promoted champion between batches; True when it changed."""
        now = time.monotonic()
        if now - self._models_checked < every_seconds:
            return False
        self._models_checked = now
        from models.registry import ModelRegistry

        registry = ModelRegistry(registry_root)
        try:
            roles = registry.roles()
        except Exception:
            log.exception("model roles unreadable; keeping the current models")
            return False
        self._refresh_shadows(registry, list(roles.shadows))
        version = roles.champion
        if version is None or version == self._champion_version:
            return False
        try:
            scorer = registry.load(version, **self.settings.scorer_options())
        except Exception:
            log.exception("could not load the promoted champion; keeping the current one")
            return False
        old = self._champion_version
        self.pipeline.champion = scorer
        self._champion_version = version
        if old:
            metrics.MODEL_INFO.labels(old, "champion").set(0)
        metrics.MODEL_INFO.labels(version, "champion").set(1)
        log.info("champion model is now %s (was %s)", version, old)
        return True
