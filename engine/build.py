"""Assemble a :class:`~engine.service.ScoringService` from settings (composition root).

The worker, the CLI, replay, the demo and the benchmarks all build the service here, so that they
run the same stages with the same configuration.
"""

from __future__ import annotations

import logging
from pathlib import Path

import redis

from engine import metrics
from engine.pipeline import Pipeline
from engine.policy import Policy
from engine.service import ScoringService
from engine.settings import Settings
from engine.sinks import KafkaSink, MemorySink, NullSink
from features.spec import DEFAULT_SPEC
from features.store import RedisFeatureStore
from models.online import OnlineLogisticModel
from models.registry import ModelRegistry
from rules.reload import RuleSetWatcher

log = logging.getLogger(__name__)


def online_model(checkpoint: Path, feature_names: list[str]) -> OnlineLogisticModel:
    """The online model from its checkpoint, or a fresh one (also when the features changed)."""
    if checkpoint.exists():
        try:
            model = OnlineLogisticModel.load(checkpoint)
        except Exception:
            log.exception("online checkpoint %s unreadable; starting a fresh model", checkpoint)
        else:
            if model.feature_names == feature_names:
                return model
            log.warning("online checkpoint %s has other features; starting fresh", checkpoint)
    return OnlineLogisticModel(feature_names)


def build_service(
    settings: Settings,
    sink: KafkaSink | MemorySink | NullSink | None = None,
    client: redis.Redis | None = None,
    use_registry: bool = True,
    live: bool = True,
) -> ScoringService:
    client = client or redis.Redis.from_url(settings.redis_url)
    store = RedisFeatureStore(client, DEFAULT_SPEC)
    store.warm_up()
    watcher = RuleSetWatcher(
        settings.rules_dir, store.feature_names, poll_seconds=2.0, redis_client=client
    )
    rules = watcher.current()
    champion = None
    if use_registry:
        try:
            champion = ModelRegistry(settings.models_dir).load_champion()
        except Exception:
            log.exception("champion model unreadable; deciding with rules only until a good one")
    online = online_model(settings.checkpoints_dir / "online.pkl", store.feature_names)
    pipeline = Pipeline(
        store,
        rules,
        Policy(settings.review_threshold, settings.block_threshold),
        champion=champion,
        online=online,
    )
    if champion is not None:
        metrics.MODEL_INFO.labels(champion.version, "champion").set(1)
    metrics.MODEL_INFO.labels(online.version, "online").set(1)
    sink = sink if sink is not None else KafkaSink(settings.kafka_bootstrap)
    return ScoringService(settings, pipeline, client, sink, live=live, rules_watcher=watcher)
