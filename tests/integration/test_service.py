"""The scoring service against a real Redis-protocol server (no Kafka: MemorySink)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
import redis

from engine.build import build_service
from engine.pipeline import STAGES
from engine.review.store import QUEUE_KEY, top_cases
from engine.schemas import RawMessage
from engine.service import ScoringService
from engine.settings import Settings
from engine.sinks import MemorySink
from models.registry import ModelRegistry
from models.train import train_lightgbm

pytestmark = pytest.mark.integration

T0 = 1767225600000


def txn(i: int, **kw: object) -> dict[str, object]:
    rec: dict[str, object] = {
        "event_id": f"e{i}", "ts": T0 + i * 1000, "card_id": f"card_{i % 5}",
        "merchant_id": f"m{i % 3}", "amount": 10.0 + i, "country": "FR",
    }  # fmt: skip
    rec.update(kw)
    return rec


def raw(records: list[dict[str, object]], topic: str = "transactions") -> list[RawMessage]:
    return [RawMessage(orjson.dumps(r), topic, 0, i) for i, r in enumerate(records)]


@pytest.fixture
def settings(redis_client: redis.Redis, redis_url: str, tmp_path: Path) -> Settings:
    return Settings(redis_url=redis_url, data_dir=tmp_path, review_threshold=0.5)


@pytest.fixture
def service(settings: Settings, redis_client: redis.Redis) -> ScoringService:
    return build_service(settings, sink=MemorySink(), client=redis_client)


def sink_of(service: ScoringService) -> MemorySink:
    assert isinstance(service.sink, MemorySink)
    return service.sink


def test_scores_every_valid_transaction_once_and_dead_letters_the_rest(
    service: ScoringService,
) -> None:
    msgs = raw([txn(i) for i in range(50)])
    msgs.insert(10, RawMessage(b"garbage", "transactions", 0, 99))
    report = service.process_transactions(msgs)
    assert (report.valid, report.dead) == (50, 1)
    scores = [orjson.loads(v) for v in sink_of(service).values("scores")]
    assert [s["event_id"] for s in scores] == [f"e{i}" for i in range(50)]
    assert {s["mode"] for s in scores} == {"degraded"}  # no champion registered yet
    assert all("degraded:model_unavailable" in s["reasons"] for s in scores)
    dead = [orjson.loads(v) for v in sink_of(service).values("dead-letter")]
    assert [(d["reason"], d["offset"]) for d in dead] == [("not_json", 99)]
    # a live service also times its drift statistics (engine/drift.py)
    assert set(report.stage_seconds) == {*STAGES, "drift"}


def test_rules_send_cases_to_the_review_queue_ranked_by_expected_loss(
    service: ScoringService, redis_client: redis.Redis
) -> None:
    recs = [txn(1, amount=6000.0), txn(2, amount=9000.0), txn(3, country="KP", amount=20.0)]
    service.process_transactions(raw(recs))
    cases = [orjson.loads(v) for v in sink_of(service).values("review-queue")]
    assert {c["event_id"] for c in cases} == {"e1", "e2", "e3"}
    assert redis_client.zcard(QUEUE_KEY) == 3
    top = top_cases(redis_client, 3)
    assert [c["event_id"] for c in top] == ["e2", "e1", "e3"]  # by expected loss
    assert "rule:large_amount" in top[0]["reasons"] or "rule:high_risk_country" in top[0]["reasons"]
    assert top[0]["features"]  # analysts see the features the decision was made from


def test_redelivered_batch_is_scored_again_but_never_counted_twice(
    service: ScoringService,
) -> None:
    recs = [txn(i, card_id="card_x") for i in range(5)]
    service.process_transactions(raw(recs))
    service.process_transactions(raw(recs))
    first, second = (
        [orjson.loads(v) for v in sink_of(service).values("scores")][k * 5 : (k + 1) * 5]
        for k in (0, 1)
    )
    assert [s["score"] for s in first] == [s["score"] for s in second]
    names = service.pipeline.feature_names
    col = names.index("card_id_count_1h")
    again = service.process_transactions(raw([txn(9, card_id="card_x")]))
    assert again.scored is not None
    assert again.scored.features[0, col] == 6  # 5 earlier + itself, redeliveries not counted


class KilledAfterFirstDecision(MemorySink):
    """A worker killed as soon as its first decision left: librdkafka sends in the background
    from the moment a message is produced, so a decision can reach ``scores`` mid-emit."""

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        super().send(topic, key, value)
        if topic == "scores":
            msg = "SIGKILL"
            raise RuntimeError(msg)


def test_a_decision_that_left_before_a_crash_is_repeated_byte_for_byte(
    settings: Settings, redis_client: redis.Redis
) -> None:
    recs = [txn(i, amount=6000.0 if i == 0 else 10.0 + i) for i in range(20)]
    crashed = build_service(settings, sink=KilledAfterFirstDecision(), client=redis_client)
    with pytest.raises(RuntimeError, match="SIGKILL"):
        crashed.process_transactions(raw(recs))
    [(_, first)] = crashed.sink.records["scores"]  # type: ignore[union-attr]
    restarted = build_service(settings, sink=MemorySink(), client=redis_client)
    restarted.process_transactions(raw(recs))  # Kafka redelivers the uncommitted batch
    again = sink_of(restarted).values("scores")
    assert again[0] == first  # the memo was written before the decision was produced
    assert [orjson.loads(v)["event_id"] for v in again] == [r["event_id"] for r in recs]
    assert redis_client.zcard(QUEUE_KEY) == 1  # the rule-raised case, queued once


def test_labels_are_learned_once_from_the_features_recorded_at_scoring(
    service: ScoringService,
) -> None:
    service.process_transactions(raw([txn(i) for i in range(20)]))
    labels = [{"event_id": f"e{i}", "ts": T0 + 10**7, "is_fraud": i % 4 == 0} for i in range(20)]
    labels.append({"event_id": "never-scored", "ts": T0, "is_fraud": True})
    first = service.process_labels(raw(labels, "labels"))
    again = service.process_labels(raw(labels, "labels"))
    assert first.learned == 20
    assert again.learned == 0
    online = service.pipeline.online
    assert online is not None and online.n_learned == 20  # type: ignore[attr-defined]


def test_online_model_survives_a_restart(settings: Settings, service: ScoringService) -> None:
    service.process_transactions(raw([txn(i) for i in range(20)]))
    labels = [{"event_id": f"e{i}", "ts": T0 + 10**7, "is_fraud": i % 2 == 0} for i in range(20)]
    service.process_labels(raw(labels, "labels"))
    service.checkpoint()
    x = np.ones((1, len(service.pipeline.feature_names)))
    assert service.pipeline.online is not None
    before = service.pipeline.online.score_batch(x)
    restarted = build_service(settings, sink=MemorySink(), client=service.redis)
    assert restarted.pipeline.online is not None
    assert restarted.pipeline.online.score_batch(x) == pytest.approx(before)


def test_promoted_champion_is_picked_up_without_restart(
    settings: Settings, service: ScoringService
) -> None:
    names = service.pipeline.feature_names
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, len(names)))
    y = x[:, 0] > 0.5
    scorer = train_lightgbm(x, y, names, num_boost_round=20).scorer
    registry = ModelRegistry(settings.models_dir)
    registry.promote(registry.register(scorer, {"source": "test"}))
    assert service.refresh_models(settings.models_dir, every_seconds=0)
    service.process_transactions(raw([txn(i) for i in range(10)]))
    scores = [orjson.loads(v) for v in sink_of(service).values("scores")]
    assert {s["model"] for s in scores} == {scorer.version}
    assert {s["mode"] for s in scores} == {"normal"}
    flagged = [s for s in scores if s["decision"] != "allow"]
    for s in flagged:
        assert len(s["contributions"]) == 3


def test_a_label_that_arrives_before_its_transaction_is_applied_when_it_is_scored(
    service: ScoringService, redis_client: redis.Redis
) -> None:
    early = [{"event_id": "e7", "ts": T0, "is_fraud": True, "source": "chargeback"}]
    assert service.process_labels(raw(early, "labels")).learned == 0
    assert redis_client.hexists("rs:labels:pending", "e7")
    report = service.process_transactions(raw([txn(i) for i in range(10)]))
    assert report.learned == 1
    assert not redis_client.hexists("rs:labels:pending", "e7")
    again = service.process_labels(raw(early, "labels"))  # a redelivery is a duplicate now
    assert again.learned == 0
    online = service.pipeline.online
    assert online is not None and online.n_learned == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("live", [True, False])
def test_labels_reach_label_based_features_live_and_in_replay(
    settings: Settings, redis_client: redis.Redis, live: bool
) -> None:
    svc = build_service(settings, sink=MemorySink(), client=redis_client, live=live)
    day = 86_400_000
    svc.process_transactions(raw([txn(i, merchant_id="m_hot") for i in range(5)]))
    labels = [{"event_id": f"e{i}", "ts": T0 + day, "is_fraud": True} for i in range(5)]
    svc.process_labels(raw(labels, "labels"))
    later = svc.process_transactions(raw([txn(99, merchant_id="m_hot", ts=T0 + 8 * day)]))
    assert later.scored is not None
    col = svc.pipeline.feature_names.index("merchant_id_fraud_rate_7d_delay7d")
    assert later.scored.features[0, col] > 0


def test_online_evaluation_gauges_follow_arriving_labels(
    settings: Settings, service: ScoringService
) -> None:
    from engine.metrics import REGISTRY

    names = service.pipeline.feature_names
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, len(names)))
    scorer = train_lightgbm(x, x[:, 0] > 0, names, num_boost_round=10).scorer
    registry = ModelRegistry(settings.models_dir)
    registry.promote(registry.register(scorer, {"source": "test"}))
    service.refresh_models(settings.models_dir, every_seconds=0)
    service.process_transactions(raw([txn(i, amount=5.0 + 50 * (i % 3)) for i in range(30)]))
    labels = [{"event_id": f"e{i}", "ts": T0 + 10**7, "is_fraud": i % 3 == 2} for i in range(30)]
    service.process_labels(raw(labels, "labels"))
    ap = REGISTRY.get_sample_value(
        "riskstream_model_average_precision", {"version": scorer.version}
    )
    assert ap is not None and 0.0 <= ap <= 1.0
    assert (
        REGISTRY.get_sample_value("riskstream_model_review_precision", {"version": scorer.version})
        is not None
    )


def test_a_yaml_feature_spec_named_by_settings_replaces_the_default(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "- {entity: card_id, agg: count, window: 1h, resolution: 1m}\n"
        "- {entity: card_id, agg: distinct, field: merchant_id, window: 24h, resolution: 10m}\n"
    )
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "r.yaml").write_text(
        "rules:\n  - {id: many, condition: f.card_id_count_1h > 100, action: review, reason: x}\n"
    )
    settings = Settings(redis_url=redis_url, data_dir=tmp_path, feature_spec=spec, rules_dir=rules)
    svc = build_service(settings, sink=MemorySink(), client=redis_client)
    assert svc.pipeline.feature_names[:2] == [
        "card_id_count_1h", "card_id_distinct_merchant_id_24h"
    ]  # fmt: skip
    report = svc.process_transactions(raw([txn(i, card_id="c") for i in range(4)]))
    assert report.scored is not None
    assert report.scored.features[:, 0].tolist() == [1, 2, 3, 4]
    assert report.scored.features[:, 1].tolist() == [1, 2, 3, 3]
