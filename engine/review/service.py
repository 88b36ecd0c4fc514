"""What an analyst can do, in one place: the web pages and ``riskstream review`` both call this.

A final verdict (fraud / legitimate) is written once, atomically with its label in the outbox;
the label is then published on the ``labels`` topic (source ``analyst``), where the worker
teaches it to the online model and the label-based features like any other label. A label that
could not be published stays in the outbox and is sent again by :meth:`publish_outbox`.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
import redis

from engine import metrics
from engine.review.index import QueueFilter, QueueIndex, QueuePage
from engine.review.plot import timeline
from engine.review.store import (
    FINAL_VERDICTS,
    FRAUD,
    VERDICTS,
    CaseStore,
    claims,
    history,
    load_case,
)
from engine.review.users import User
from engine.settings import Settings

log = logging.getLogger(__name__)

LABEL_SOURCE = "analyst"


class ReviewError(Exception):
    """Something the user asked for that cannot be done (shown as one line)."""


class LabelPublisher:
    """Sends labels to the ``labels`` topic and waits until the broker has them."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from confluent_kafka import Producer

        self.topic = topic
        self._producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0,
                                   "message.timeout.ms": 15000})  # fmt: skip
        self._lock = threading.Lock()

    def publish(self, labels: Mapping[str, bytes]) -> list[str]:
        """Publish ``event_id → label JSON``; returns the ids the broker acknowledged."""
        done: list[str] = []
        failed: list[str] = []

        def report(eid: str) -> Callable[[Any, Any], None]:
            def cb(err: Any, _msg: Any) -> None:
                (failed if err is not None else done).append(eid)

            return cb

        with self._lock:
            for eid, value in labels.items():
                key = orjson.loads(value).get("card_id")
                self._producer.produce(
                    self.topic, value, key.encode() if key else None, on_delivery=report(eid)
                )
            self._producer.flush(20)
        if failed:
            log.warning("%d analyst labels not published yet (kept in the outbox)", len(failed))
        return done


def reason_words(reason: str, rules: Mapping[str, str], features: Mapping[str, float]) -> str:
    """A reason code in words: a rule's description, a model contribution, a threshold.

    >>> reason_words("rule:big", {"big": "A very large amount."}, {})
    'A very large amount.'
    >>> reason_words("model:card_id_count_1h", {}, {"card_id_count_1h": 9.0})
    'model: card_id_count_1h = 9'
    >>> reason_words("score>=0.5", {}, {})
    'score at or above 0.5'
    """
    kind, _, rest = reason.partition(":")
    if kind == "rule":
        return rules.get(rest) or f"rule {rest}"
    if kind == "model":
        v = features.get(rest)
        return f"model: {rest} = {v:,.4g}" if v is not None else f"model: {rest}"
    if reason.startswith("score>="):
        return f"score at or above {reason[7:]}"
    if kind == "degraded":
        return f"decided without the model ({rest.replace('_', ' ')})"
    return reason


def percentile(hist: Mapping[str, Any], value: float) -> float | None:
    """Where ``value`` falls in a reference histogram, in percent: linear within a bin, the
    middle of an open-ended one (so a value equal to a point mass, e.g. a count of 0 that most
    training rows share, reads as its mid-rank).

    >>> h = {"edges": [0.0, 10.0], "counts": [50, 40, 10]}
    >>> percentile(h, 0.0), percentile(h, 5.0), percentile(h, 99.0)
    (25.0, 70.0, 95.0)
    """
    if value is None or not math.isfinite(value):
        return None
    edges = [float(e) for e in hist.get("edges", [])]
    counts = [int(c) for c in hist.get("counts", [])]
    total = sum(counts)
    if not total or len(counts) != len(edges) + 1:
        return None
    below = 0
    for i, c in enumerate(counts):
        lo = edges[i - 1] if i > 0 else None
        hi = edges[i] if i < len(edges) else None
        if hi is not None and value > hi:
            below += c
            continue
        if lo is None or hi is None or hi <= lo:  # an open-ended bin: its middle
            frac = 0.5
        else:
            frac = (value - lo) / (hi - lo)
        return 100.0 * (below + frac * c) / total
    return 100.0


class ReviewService:
    """Queue, case, verdict, lead figures and audit for one Redis database and labels topic."""

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis | None = None,
        publisher: LabelPublisher | None = None,
    ) -> None:
        self.settings = settings
        self.redis = client or redis.Redis.from_url(settings.redis_url)
        self.store = CaseStore(self.redis, settings.review_claim_seconds)
        self.index = QueueIndex()
        self._publisher = publisher
        self._loaded = False
        self._refresh_lock = threading.Lock()
        self._last_refresh = 0.0
        self._rules: dict[str, str] | None = None
        self._reference: tuple[str | None, dict[str, Any]] = (None, {})
        self._facets: tuple[str, dict[str, list[tuple[str, int]]]] = ("", {})

    @property
    def publisher(self) -> LabelPublisher:
        if self._publisher is None:
            self._publisher = LabelPublisher(
                self.settings.kafka_bootstrap, self.settings.topic_labels
            )
        return self._publisher

    # -- the queue ----------------------------------------------------------------------------

    def refresh(self, min_interval: float = 0.0) -> None:
        """Bring the in-memory queue up to date (at most once per ``min_interval`` seconds)."""
        with self._refresh_lock:
            now = time.monotonic()
            if self._loaded and now - self._last_refresh < min_interval:
                return
            if not self._loaded:
                self.index.load(self.redis)
                self._loaded = True
            else:
                self.index.refresh(self.redis)
            self._last_refresh = now
            oldest = self.index.oldest_queued_at()
            metrics.REVIEW_QUEUE_AGE.set(0.0 if oldest is None else max(0.0, time.time() - oldest))

    def page(self, flt: QueueFilter) -> QueuePage:
        """One page of the queue, ranked by expected loss, with who holds each case."""
        self.refresh()
        page = self.index.query(flt)
        holders = claims(self.redis, [r["event_id"] for r in page.rows])
        rules = self.rule_descriptions()
        for r, h in zip(page.rows, holders, strict=True):
            r["holder"] = h
            r["reason_words"] = [
                reason_words(x, rules, {}) for x in r["reasons"] if not x.startswith("model:")
            ] + [f"model: {x[6:]}" for x in r["reasons"] if x.startswith("model:")]
        if self._facets[0] != page.version:
            self._facets = (page.version, self.index.facets())
        page.facets = self._facets[1]
        return page

    def version(self) -> str:
        self.refresh()
        return self.index.version

    # -- one case -----------------------------------------------------------------------------

    def rule_descriptions(self) -> dict[str, str]:
        if self._rules is None:
            try:
                from features.spec import DEFAULT_SPEC, load_spec
                from features.transaction import TRANSACTION_FEATURE_NAMES
                from rules.loader import load_rule_set

                spec = (
                    load_spec(self.settings.feature_spec)
                    if self.settings.feature_spec
                    else DEFAULT_SPEC
                )
                names = [f.name for f in spec] + list(TRANSACTION_FEATURE_NAMES)
                rs = load_rule_set(self.settings.rules_dir, names)
                self._rules = {r.id: r.description or r.reason for r in rs.rules}
            except Exception:
                log.exception("rule descriptions unavailable")
                self._rules = {}
        return self._rules

    def reference_histograms(self) -> tuple[str | None, dict[str, Any]]:
        """The champion's training-reference histograms (cached per champion version)."""
        from models.registry import ModelRegistry

        try:
            reg = ModelRegistry(self.settings.models_dir)
            version = reg.champion_version()
            if version != self._reference[0]:
                meta = reg.metadata(version) if version else {}
                self._reference = (version, meta.get("reference_histograms") or {})
        except Exception:
            log.exception("reference histograms unavailable")
        return self._reference

    def case(self, event_id: str, user: User | None = None) -> dict[str, Any]:
        """A case with everything the case page shows; claims it for ``user`` when given."""
        claim = self.store.claim(event_id, user.name) if user is not None else None
        case: dict[str, Any] | None = load_case(self.redis, event_id)
        if case is None:
            msg = f"no case {event_id!r}"
            raise ReviewError(msg)
        case["claim_result"] = claim
        feats: dict[str, float] = case.get("features") or {}
        rules = self.rule_descriptions()
        case["reason_rows"] = [
            {"code": r, "words": reason_words(r, rules, feats)} for r in case.get("reasons", [])
        ]
        case["rules_fired"] = [
            {"id": r[5:], "description": rules.get(r[5:], "")}
            for r in case.get("reasons", [])
            if r.startswith("rule:")
        ]
        version, ref = self.reference_histograms()
        case["reference_model"] = version
        case["feature_rows"] = [
            {"name": name, "value": value,
             "percentile": percentile(ref[name], value) if name in ref else None}  # fmt: skip
            for name, value in feats.items()
        ]
        merchant = str(case.get("merchant_id") or "")
        h = history(self.redis, str(case.get("card_id") or ""), merchant)
        case["history"] = h
        case["card_plot"] = timeline(h["card"], event_id)
        case["merchant_plot"] = timeline(h["merchant"], event_id)
        return case

    # -- verdicts -----------------------------------------------------------------------------

    def decide(
        self, event_id: str, user: User, verdict: str, comment: str = ""
    ) -> dict[str, Any]:
        """Write ``user``'s verdict once and publish its label; ReviewError if refused."""
        if verdict not in VERDICTS:
            msg = f"verdict must be one of {', '.join(VERDICTS)}, not {verdict!r}"
            raise ReviewError(msg)
        raw = self.redis.hget(f"rs:review:case:{event_id}", "data")
        if raw is None:
            msg = f"no case {event_id!r}"
            raise ReviewError(msg)
        case = orjson.loads(raw)
        label = None
        if verdict in FINAL_VERDICTS:
            label = {
                "event_id": event_id, "ts": int(time.time() * 1000),
                "is_fraud": verdict == FRAUD, "source": LABEL_SOURCE, "analyst": user.name,
                "card_id": case.get("card_id"),
            }  # fmt: skip
        result = self.store.decide(event_id, user.name, verdict, comment[:2000], label, user.role)
        if not result["ok"]:
            raise ReviewError(refusal(result))
        record: dict[str, Any] = result["record"]
        metrics.REVIEW_VERDICTS.labels(verdict).inc()
        if record.get("claimed_at"):
            metrics.REVIEW_DECISION_SECONDS.observe(max(0.0, record["at"] - record["claimed_at"]))
        if label is not None:
            self.publish_outbox()
        return record

    def publish_outbox(self) -> int:
        """Publish every label still in the outbox; returns how many the broker took."""
        pending = self.store.outbox()
        if not pending:
            return 0
        try:
            done = self.publisher.publish(pending)
        except Exception:
            log.exception("labels not published (kept in the outbox)")
            return 0
        self.store.delivered(done)
        return len(done)

    def reopen(self, event_id: str, lead: User, comment: str) -> dict[str, Any]:
        if not lead.is_lead:
            msg = "only a lead can re-open a case"
            raise ReviewError(msg)
        result = self.store.reopen(event_id, lead.name, comment[:2000])
        if not result["ok"]:
            raise ReviewError(refusal(result))
        return result

    def reassign(self, event_id: str, lead: User, to: User) -> dict[str, Any]:
        if not lead.is_lead:
            msg = "only a lead can re-assign a case"
            raise ReviewError(msg)
        result = self.store.reassign(event_id, lead.name, to.name)
        if not result["ok"]:
            raise ReviewError(refusal(result))
        return result

    # -- lead figures -------------------------------------------------------------------------

    def lead_figures(self) -> dict[str, Any]:
        """Verdicts per analyst per day, and agreement with later labels from other sources."""
        verdicts, outcomes = self.store.verdicts_and_outcomes()
        per_day: Counter[tuple[str, str, str]] = Counter()
        for v in verdicts:
            day = datetime.fromtimestamp(float(v["at"]), UTC).strftime("%Y-%m-%d")
            per_day[(day, v["analyst"], v["verdict"])] += 1
        for a in self.store.audit_log():
            if a.get("action") == "verdict" and a.get("after") == "needs_more_info":
                day = datetime.fromtimestamp(float(a["at"]), UTC).strftime("%Y-%m-%d")
                per_day[(day, a["actor"], "needs_more_info")] += 1
        table: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
        for (day, analyst, verdict), n in per_day.items():
            table[(day, analyst)][verdict] = n
        rows = [
            {"day": d, "analyst": a, **{v: c.get(v, 0) for v in VERDICTS},
             "total": sum(c.values())}  # fmt: skip
            for (d, a), c in sorted(table.items(), reverse=True)
        ]
        fraud = [v for v in verdicts if v["verdict"] == FRAUD]
        legit = [v for v in verdicts if v["verdict"] != FRAUD]
        fraud_known = [outcomes[v["event_id"]] for v in fraud if v["event_id"] in outcomes]
        legit_known = [outcomes[v["event_id"]] for v in legit if v["event_id"] in outcomes]
        confirmed = sum(1 for o in fraud_known if o["is_fraud"])
        missed = sum(1 for o in legit_known if o["is_fraud"])
        return {
            "rows": rows,
            "fraud_verdicts": len(fraud),
            "fraud_confirmed": confirmed,
            "fraud_contradicted": len(fraud_known) - confirmed,
            "fraud_precision": confirmed / len(fraud_known) if fraud_known else None,
            "legit_verdicts": len(legit),
            "legit_with_chargeback": missed,
            "legit_missed_rate": missed / len(legit) if legit else None,
            "outcomes_known": len(outcomes),
        }

    def audit_csv(self) -> str:
        out = io.StringIO()
        cols = ["id", "at_utc", "actor", "role", "action", "event_id", "before", "after", "comment"]
        w = csv.DictWriter(out, cols, extrasaction="ignore")
        w.writeheader()
        for a in reversed(self.store.audit_log()):
            a["at_utc"] = datetime.fromtimestamp(float(a["at"]), UTC).isoformat(timespec="seconds")
            w.writerow(a)
        return out.getvalue()


def refusal(result: Mapping[str, Any]) -> str:
    """Why a claim or verdict was refused, in one line."""
    why = result.get("why")
    if why == "decided":
        v = result["verdict"]
        at = datetime.fromtimestamp(float(v["at"]), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"already decided by {v['analyst']} at {at} ({v['verdict']})"
    if why == "claimed":
        return f"claimed by {result['analyst']}; only they can decide it until the claim expires"
    if why == "missing":
        return "no such case"
    if why == "open":
        return "the case has no verdict to re-open"
    return str(why)


class OutcomeFollower(threading.Thread):
    """Reads the ``labels`` topic (partition assignment, offsets kept in Redis) and keeps the
    chargebacks and other non-analyst labels of review cases, for the lead's agreement figures."""

    OFFSETS_KEY = "rs:review:labels-offsets"

    def __init__(self, settings: Settings, store: CaseStore) -> None:
        super().__init__(name="review-outcomes", daemon=True)
        self.settings = settings
        self.store = store
        self.stopping = threading.Event()
        self.seen = 0

    def run(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        topic = self.settings.topic_labels
        try:
            consumer = Consumer({"bootstrap.servers": self.settings.kafka_bootstrap,
                                 "group.id": f"{self.settings.app_id}-review-outcomes",
                                 "enable.auto.commit": False})  # fmt: skip
        except Exception:
            log.exception("outcome follower could not start")
            return
        try:
            meta = consumer.list_topics(topic, timeout=10)
            parts = sorted(meta.topics[topic].partitions) if topic in meta.topics else [0]
            saved: Any = self.store.redis.hgetall(self.OFFSETS_KEY)
            consumer.assign([
                TopicPartition(topic, p, int(saved.get(str(p).encode(), OFFSET_BEGINNING)))
                for p in parts
            ])  # fmt: skip
            while not self.stopping.is_set():
                msgs = consumer.consume(1000, 0.5)
                good = [m for m in msgs if m.error() is None and m.value() is not None]
                if not good:
                    continue
                labels = []
                for m in good:
                    try:
                        labels.append(orjson.loads(m.value() or b"null"))
                    except orjson.JSONDecodeError:
                        continue
                self.seen += self.store.record_outcomes([x for x in labels if isinstance(x, dict)])
                offsets: dict[Any, Any] = {
                    str(m.partition()): int(m.offset() or 0) + 1 for m in good
                }
                self.store.redis.hset(self.OFFSETS_KEY, mapping=offsets)
        except Exception:
            log.exception("outcome follower stopped")
        finally:
            consumer.close()
