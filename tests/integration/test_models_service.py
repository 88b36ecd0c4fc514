"""Model fallback and recovery through the real service (real Redis, MemorySink, no Kafka)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import pytest
import redis

from engine.build import build_service
from engine.schemas import RawMessage
from engine.service import ScoringService
from engine.settings import Settings
from engine.sinks import MemorySink
from features.spec import DEFAULT_SPEC, feature_names
from models.lgbm import LightGBMScorer
from models.registry import ModelRegistry
from models.train import train_lightgbm

pytestmark = pytest.mark.integration

T0 = 1767225600000
NAMES = feature_names(DEFAULT_SPEC)


def good_model(seed: int = 0, names: list[str] = NAMES) -> LightGBMScorer:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(400, len(names)))
    return train_lightgbm(x, x[:, 0] > 0.5, names, num_boost_round=15 + seed).scorer


def batch(start: int, n: int = 20) -> list[RawMessage]:
    recs = [{"event_id": f"e{i}", "ts": T0 + i * 1000, "card_id": f"card_{i % 4}",
             "merchant_id": "m1", "amount": 9000.0 if i % 10 == 3 else 25.0 + i}
            for i in range(start, start + n)]  # fmt: skip
    return [RawMessage(orjson.dumps(r), "transactions", 0, i) for i, r in enumerate(recs)]


def decisions(service: ScoringService, start: int) -> list[dict[str, object]]:
    assert isinstance(service.sink, MemorySink)
    before = len(service.sink.values("scores"))
    service.process_transactions(batch(start))
    return [orjson.loads(v) for v in service.sink.values("scores")[before:]]


@pytest.fixture
def settings(redis_client: redis.Redis, redis_url: str, tmp_path: Path) -> Settings:
    return Settings(redis_url=redis_url, data_dir=tmp_path)


def break_missing(path: Path) -> None:
    path.unlink()


def break_corrupt(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])


@pytest.mark.parametrize("breakage", [break_missing, break_corrupt], ids=["missing", "corrupt"])
def test_bad_champion_file_means_rules_only_then_recovery_on_promote(
    settings: Settings,
    redis_client: redis.Redis,
    breakage: Callable[[Path], None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = ModelRegistry(settings.models_dir)
    bad = registry.register(good_model(0))
    registry.promote(bad)
    breakage(settings.models_dir / bad / "model.txt")
    with caplog.at_level(logging.ERROR):
        service = build_service(settings, sink=MemorySink(), client=redis_client)
    assert service.pipeline.champion is None  # the worker started anyway
    assert "champion model unreadable" in caplog.text and bad in caplog.text

    first = decisions(service, 0)
    assert {d["mode"] for d in first} == {"degraded"}
    assert all("degraded:model_unavailable" in d["reasons"] for d in first)  # type: ignore[operator]
    assert {d["decision"] for d in first if "rule:large_amount" in d["reasons"]} == {"review"}  # type: ignore[operator]

    good = registry.register(good_model(1))
    registry.promote(good)
    assert service.refresh_models(settings.models_dir, every_seconds=0)
    after = decisions(service, 100)
    assert {d["mode"] for d in after} == {"normal"} and {d["model"] for d in after} == {good}
    assert registry.roles().retired == (bad,)


def test_promoting_a_corrupt_model_keeps_the_current_champion(
    settings: Settings, redis_client: redis.Redis
) -> None:
    registry = ModelRegistry(settings.models_dir)
    good = registry.register(good_model(0))
    registry.promote(good)
    service = build_service(settings, sink=MemorySink(), client=redis_client)
    bad = registry.register(good_model(2))
    (settings.models_dir / bad / "model.txt").write_text("garbage\n")
    registry.promote(bad)
    assert not service.refresh_models(settings.models_dir, every_seconds=0)
    out = decisions(service, 0)
    assert {d["mode"] for d in out} == {"normal"} and {d["model"] for d in out} == {good}


def test_champion_needing_unknown_features_is_degraded_feature_mismatch(
    settings: Settings, redis_client: redis.Redis
) -> None:
    registry = ModelRegistry(settings.models_dir)
    other = registry.register(good_model(0, [*NAMES[:-1], "merchant_fraud_rate_7d"]))
    registry.promote(other)
    service = build_service(settings, sink=MemorySink(), client=redis_client)
    out = decisions(service, 0)
    assert {d["mode"] for d in out} == {"degraded"}
    assert all("degraded:feature_mismatch" in d["reasons"] for d in out)  # type: ignore[operator]
    good = registry.register(good_model(1))
    registry.promote(good)
    assert service.refresh_models(settings.models_dir, every_seconds=0)
    assert {d["mode"] for d in decisions(service, 200)} == {"normal"}


def test_explain_method_path_reaches_the_champion_and_its_decisions(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """RISKSTREAM_EXPLAIN_METHOD=path: the worker's champion explains by path contributions;
    scores and decisions are those of TreeSHAP's service, only the contributions may differ."""
    registry = ModelRegistry(tmp_path / "models")
    registry.promote(registry.register(good_model(), {"source": "test"}))
    out = {}
    for method in ("shap", "path"):
        redis_client.flushdb()
        s = Settings(redis_url=redis_url, data_dir=tmp_path, explain_method=method,
                     review_threshold=0.0, block_threshold=1.0)  # fmt: skip
        service = build_service(s, sink=MemorySink())
        assert service.pipeline.champion is not None
        assert service.pipeline.champion.explain_method == method
        out[method] = decisions(service, 0)
    shap, path = out["shap"], out["path"]
    assert [(d["score"], d["decision"]) for d in shap] == [
        (d["score"], d["decision"]) for d in path
    ]
    assert all(d["decision"] == "review" and len(d["contributions"]) == 3 for d in path)
