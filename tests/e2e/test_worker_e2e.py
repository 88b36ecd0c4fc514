"""A real worker process consumes a mixed stream from a real Kafka-protocol broker."""

from __future__ import annotations

import uuid
from pathlib import Path

import orjson
import pytest

from engine.sinks import ensure_topics
from engine.worker_process import WorkerProcess, metric_value, wait_until
from replay.kafka_io import produce, producer, read_topic

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

MALFORMED = [
    (b"{not json", "not_json"),
    (b"[1,2,3]", "not_object"),
    (b'{"event_id":"x1","ts":1767225600000,"merchant_id":"m","amount":3}', "missing_field"),
    (
        b'{"event_id":"x2","ts":1767225600000,"card_id":"c","merchant_id":"m","amount":"3"}',
        "wrong_type",
    ),
    (
        b'{"event_id":"x3","ts":1767225600000,"card_id":"c","merchant_id":"m","amount":-1}',
        "refund_not_supported",
    ),
    (
        b'{"event_id":"x4","ts":"soon","card_id":"c","merchant_id":"m","amount":1}',
        "invalid_timestamp",
    ),
    (
        b'{"event_id":"x5","ts":1767225600000,"card_id":"4111111111111111","merchant_id":"m",'
        b'"amount":1}',
        "card_number_detected",
    ),
]


def test_every_valid_event_gets_one_decision_and_every_bad_one_a_dead_letter(
    stack: dict[str, str], tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    topics = {
        "RISKSTREAM_TOPIC_TRANSACTIONS": f"tx-{suffix}",
        "RISKSTREAM_TOPIC_EVENTS": f"ev-{suffix}",
        "RISKSTREAM_TOPIC_LABELS": f"lb-{suffix}",
        "RISKSTREAM_TOPIC_SCORES": f"sc-{suffix}",
        "RISKSTREAM_TOPIC_REVIEW": f"rq-{suffix}",
        "RISKSTREAM_TOPIC_DEAD_LETTER": f"dl-{suffix}",
    }
    env = {**stack, **topics, "RISKSTREAM_APP_ID": f"e2e-{suffix}",
           "RISKSTREAM_DATA_DIR": str(tmp_path), "RISKSTREAM_TOPIC_PARTITIONS": "2"}  # fmt: skip
    bootstrap = stack["RISKSTREAM_KAFKA_BOOTSTRAP"]
    ensure_topics(bootstrap, list(topics.values()), 2)

    valid = [
        {"event_id": f"v{i}", "ts": 1767225600000 + i * 1000, "card_id": f"card_{i % 7}",
         "merchant_id": f"m{i % 3}", "amount": 5.0 + i, "country": "FR"}
        for i in range(300)
    ]  # fmt: skip
    items: list[tuple[bytes | None, bytes]] = []
    for i, rec in enumerate(valid):
        items.append((rec["card_id"].encode(), orjson.dumps(rec)))
        if i % 40 == 0:
            items.append((None, MALFORMED[(i // 40) % len(MALFORMED)][0]))
    n_bad = len(items) - len(valid)
    expected_bad = sorted(MALFORMED[(i // 40) % len(MALFORMED)][1] for i in range(0, 300, 40))

    with WorkerProcess(env, tmp_path / "worker.log") as worker:
        produce(producer(bootstrap), topics["RISKSTREAM_TOPIC_TRANSACTIONS"], items)
        scores = read_topic(bootstrap, topics["RISKSTREAM_TOPIC_SCORES"],
                            lambda v: len(v) >= len(valid), timeout=240)  # fmt: skip
        dead = read_topic(bootstrap, topics["RISKSTREAM_TOPIC_DEAD_LETTER"],
                          lambda v: len(v) >= n_bad, timeout=60)  # fmt: skip
        assert wait_until(
            lambda: metric_value(worker.metrics(), "riskstream_decisions_total") >= len(valid), 30
        )
        text = worker.metrics()
        assert worker.alive()

    decisions = [orjson.loads(v) for v in scores]
    ids = [d["event_id"] for d in decisions]
    assert sorted(ids) == sorted(r["event_id"] for r in valid)  # exactly one each
    for d in decisions:
        assert d["decision"] in ("allow", "review", "block")
        assert 0.0 <= d["score"] <= 1.0
        assert d["rule_set"] and d["latency_ms"] >= 0

    letters = [orjson.loads(v) for v in dead]
    assert sorted(d["reason"] for d in letters) == expected_bad
    for d in letters:
        assert d["topic"] == topics["RISKSTREAM_TOPIC_TRANSACTIONS"]
        assert d["offset"] >= 0 and d["partition"] >= 0
        assert "4111111111111111" not in d["raw"]

    tx = topics["RISKSTREAM_TOPIC_TRANSACTIONS"]
    assert metric_value(text, "riskstream_events_total", {"topic": tx, "outcome": "valid"}) == 300
    assert (
        metric_value(text, "riskstream_events_total", {"topic": tx, "outcome": "invalid"}) == n_bad
    )
    assert metric_value(text, "riskstream_dead_letter_total") == n_bad
    assert metric_value(text, "riskstream_decisions_total") == 300
    assert metric_value(text, "riskstream_decision_latency_seconds_count") == 300
