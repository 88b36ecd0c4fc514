"""Prometheus metrics, named as DESIGN.md says (base units, ``_total``, ``_seconds``).

No label ever carries a card, customer or event id: cardinality stays bounded.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

REGISTRY = CollectorRegistry(auto_describe=True)

#: Fine below 50 ms, where the latency objectives are (p50 5 ms, p99 20 ms, p99.9 50 ms), so
#: quantiles interpolated from the buckets are within a millisecond there.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0015, 0.002, 0.0025, 0.003, 0.004, 0.005, 0.006, 0.007, 0.008, 0.009, 0.01,
    0.0125, 0.015, 0.0175, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

EVENTS = Counter(
    "riskstream_events_total",
    "Messages consumed, by topic and outcome (valid, invalid, duplicate_label).",
    ["topic", "outcome"],
    registry=REGISTRY,
)
DECISIONS = Counter(
    "riskstream_decisions_total", "Decisions emitted, by kind.", ["decision"], registry=REGISTRY
)
DECISION_LATENCY = Histogram(
    "riskstream_decision_latency_seconds",
    "From the event's Kafka timestamp (arrival) to its decision being flushed to Kafka.",
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
STAGE_SECONDS = Histogram(
    "riskstream_stage_seconds",
    "Wall time of one stage over one batch (consumer: idle, consume, commit; service: decode, "
    "features, rules, model, online, emit, flush).",
    ["stage"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
    registry=REGISTRY,
)
BATCH_EVENTS = Histogram(
    "riskstream_batch_events",
    "Messages per transactions batch (small when traffic is light, large under load).",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
    registry=REGISTRY,
)
ASSIGNED_PARTITIONS = Gauge(
    "riskstream_assigned_partitions",
    "Partitions of the transactions topic this worker's batch consumer owns.",
    registry=REGISTRY,
)
DEAD_LETTER = Counter(
    "riskstream_dead_letter_total",
    "Messages sent to the dead-letter topic, by reason.",
    ["reason"],
    registry=REGISTRY,
)
REVIEW_QUEUE_DEPTH = Gauge(
    "riskstream_review_queue_depth", "Open cases in the review queue.", registry=REGISTRY
)
MODEL_INFO = Gauge(
    "riskstream_model_info",
    "1 for each loaded model version and its role (champion, shadow, online).",
    ["version", "role"],
    registry=REGISTRY,
)
MODEL_AVERAGE_PRECISION = Gauge(
    "riskstream_model_average_precision",
    "Rolling average precision of a model version against arrived labels.",
    ["version"],
    registry=REGISTRY,
)
MODEL_REVIEW_PRECISION = Gauge(
    "riskstream_model_review_precision",
    "Rolling precision of the transactions a model version flagged (review or block).",
    ["version"],
    registry=REGISTRY,
)
DEGRADED_DECISIONS = Counter(
    "riskstream_degraded_decisions_total",
    "Decisions made without the champion model (rules only), by reason.",
    ["reason"],
    registry=REGISTRY,
)
BATCH_RETRIES = Counter(
    "riskstream_batch_retries_total",
    "Batches retried after a processing error (nothing is acked until they succeed).",
    ["topic"],
    registry=REGISTRY,
)
RULES_RELOAD_FAILURES = Counter(
    "riskstream_rules_reload_failures",
    "Rule sets rejected at hot reload (the running set is kept).",
    registry=REGISTRY,
)
RULES_RELOADS = Counter(
    "riskstream_rules_reloads", "Rule sets swapped in at hot reload.", registry=REGISTRY
)
LATE_EVENTS = Counter(
    "riskstream_late_events",
    "Transactions older than the allowed lateness: scored, not added to windows.",
    registry=REGISTRY,
)
LABELS_LEARNED = Counter(
    "riskstream_labels_learned_total",
    "Labels learned by the online model (each event_id once).",
    registry=REGISTRY,
)

REVIEW_VERDICTS = Counter(
    "riskstream_review_verdicts_total",
    "Analyst verdicts written, by verdict (fraud, legitimate, needs_more_info).",
    ["verdict"],
    registry=REGISTRY,
)
REVIEW_DECISION_SECONDS = Histogram(
    "riskstream_review_decision_seconds",
    "From an analyst's claim of a case to their verdict.",
    buckets=(5, 15, 30, 60, 120, 300, 600, 1200, 3600),
    registry=REGISTRY,
)
REVIEW_QUEUE_AGE = Gauge(
    "riskstream_review_queue_age_seconds",
    "Age of the oldest open case in the review queue (0 when empty).",
    registry=REGISTRY,
)

# -- drift (engine/drift.py): each worker's own window; see deploy/README.md for aggregation --
FEATURE_PSI = Gauge(
    "riskstream_feature_psi",
    "Population stability index of a feature against the champion's training reference "
    "(window: sliding = last RISKSTREAM_DRIFT_WINDOW transactions, hour = last closed "
    "event-time hour).",
    ["feature", "window"],
    registry=REGISTRY,
)
FEATURE_KS = Gauge(
    "riskstream_feature_ks",
    "Two-sample Kolmogorov-Smirnov statistic of a feature against the training reference.",
    ["feature", "window"],
    registry=REGISTRY,
)
FEATURE_MISSING_RATIO = Gauge(
    "riskstream_feature_missing_ratio",
    "Share of missing (NaN/inf) values of a feature.",
    ["feature", "window"],
    registry=REGISTRY,
)
SCORE_PSI = Gauge(
    "riskstream_score_psi",
    "Population stability index of the champion's score against its validation scores.",
    ["window"],
    registry=REGISTRY,
)
SCORE_KS = Gauge(
    "riskstream_score_ks",
    "Two-sample Kolmogorov-Smirnov statistic of the champion's score against its reference.",
    ["window"],
    registry=REGISTRY,
)
DECISION_RATIO = Gauge(
    "riskstream_decision_ratio",
    "Share of each decision among the transactions of the drift window.",
    ["decision", "window"],
    registry=REGISTRY,
)
DRIFT_WINDOW_TRANSACTIONS = Gauge(
    "riskstream_drift_window_transactions",
    "Transactions in this worker's drift window (weights for averaging across workers).",
    ["window"],
    registry=REGISTRY,
)
DRIFT_DETECTED = Counter(
    "riskstream_drift_detected_total",
    "Changes signalled by a streaming change detector (River ADWIN / Page-Hinkley) on the "
    "score, the online model's error or the label fraud rate.",
    ["detector"],
    registry=REGISTRY,
)
LABEL_FRAUD_RATIO = Gauge(
    "riskstream_label_fraud_ratio",
    "Share of fraud among the most recent arrived labels.",
    registry=REGISTRY,
)
TRAINING_FRAUD_RATIO = Gauge(
    "riskstream_training_fraud_ratio",
    "Share of fraud among the champion's training rows (the label drift reference).",
    registry=REGISTRY,
)


def metric_names() -> set[str]:
    """Every sample name this registry can expose (histograms: _bucket/_sum/_count too)."""
    names: set[str] = set()
    for family in REGISTRY.collect():
        if family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_sum", "_count")}
        elif family.type == "counter":
            names |= {family.name + "_total", family.name + "_created"}
        else:
            names.add(family.name)
    return names


def exposition() -> tuple[bytes, str]:
    """The text exposition body and its content type, for /metrics."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def observe_many(histogram: Histogram, values: Sequence[float]) -> None:
    """``histogram.observe(v)`` for every value, counted per bucket at once: a batch's latencies
    (one ``observe`` is ~1.5 µs of Python per event). Same buckets, count and sum."""
    if not len(values):
        return
    bounds = histogram._upper_bounds  # noqa: SLF001 - prometheus_client has no batch observe
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    histogram._sum.inc(float(np.sum(values)))  # noqa: SLF001
    for i in np.flatnonzero(counts).tolist():
        histogram._buckets[i].inc(int(counts[i]))  # noqa: SLF001
