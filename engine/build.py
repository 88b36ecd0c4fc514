"""Assemble a :class:`~engine.service.ScoringService` from settings (composition root).

The worker, the CLI, replay, the demo and the benchmarks all build the service here, so that they
run the same stages with the same configuration.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import redis

from engine import metrics
from engine.drift import DriftTracker
from engine.pipeline import Pipeline
from engine.policy import Policy
from engine.service import ScoringService
from engine.settings import Settings
from engine.sinks import KafkaSink, MemorySink, NullSink
from features.spec import DEFAULT_SPEC, load_spec
from features.store import RedisFeatureStore
from features.transaction import TRANSACTION_FEATURE_NAMES
from models.anomaly import AnomalyModel
from models.evaluation import RollingEvaluator
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


class ServerTooOldError(RuntimeError):
    """The Redis-protocol server lacks a command the feature store relies on."""


class RedisUnavailableError(RuntimeError):
    """No Redis-protocol server answered (one line for the CLI)."""


def _where(client: redis.Redis) -> str:
    kw = client.connection_pool.connection_kwargs
    return f"{kw.get('host', kw.get('path', '?'))}:{kw.get('port', '')}".rstrip(":")


def wait_for_redis(client: redis.Redis, seconds: float) -> None:
    """Wait up to ``seconds`` for the server to answer a PING (a worker may start before it);
    :class:`RedisUnavailableError` after that."""
    deadline = time.monotonic() + seconds
    said = False
    while True:
        try:
            client.ping()
            return
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if time.monotonic() >= deadline:
                msg = (f"no Redis server answered at {_where(client)} within {seconds:.0f} s "
                       f"({exc}); is it running? (RISKSTREAM_REDIS_URL)")  # fmt: skip
                raise RedisUnavailableError(msg) from None
            if not said:
                log.warning("waiting for the Redis server at %s (%s)", _where(client), exc)
                said = True
            time.sleep(1.0)


def check_server(client: redis.Redis) -> None:
    """Fail at start, with one clear line, on a server without hash-field expiry (HEXPIRE) or
    no server at all."""
    try:  # a probe on a key that does not exist: [-2] where supported, an error where not
        client.execute_command(  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
            "HEXPIRE", "rs:probe:hexpire", 1, "FIELDS", 1, "f"
        )
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        msg = f"no Redis server answered at {_where(client)} ({exc}) (RISKSTREAM_REDIS_URL)"
        raise RedisUnavailableError(msg) from None
    except redis.ResponseError:
        version = client.info("server").get("redis_version", "?")
        msg = (
            f"the Redis server at {_where(client)} (redis_version {version}) has no HEXPIRE: "
            "use Redis >= 7.4 or Valkey >= 9"
        )
        raise ServerTooOldError(msg) from None


def build_service(
    settings: Settings,
    sink: KafkaSink | MemorySink | NullSink | None = None,
    client: redis.Redis | None = None,
    use_registry: bool = True,
    live: bool = True,
) -> ScoringService:
    client = client or redis.Redis.from_url(settings.redis_url)
    check_server(client)
    spec = load_spec(settings.feature_spec) if settings.feature_spec else DEFAULT_SPEC
    store = RedisFeatureStore(client, spec)
    store.warm_up()
    names = [*store.feature_names, *TRANSACTION_FEATURE_NAMES]
    watcher = RuleSetWatcher(settings.rules_dir, names, poll_seconds=2.0, redis_client=client)
    rules = watcher.current()
    champion = None
    if use_registry:
        try:
            registry = ModelRegistry(settings.models_dir)
            champion = registry.load_champion(**settings.scorer_options())
        except Exception:
            log.exception("champion model unreadable; deciding with rules only until a good one")
    online = online_model(settings.checkpoints_dir / "online.pkl", names)
    anomaly = AnomalyModel.load_or_new(settings.checkpoints_dir / "anomaly.pkl", names)
    anomaly.warm_up()
    pipeline = Pipeline(
        store,
        rules,
        Policy(settings.review_threshold, settings.block_threshold),
        champion=champion,
        online=online,
        anomaly=anomaly,
    )
    if champion is not None:
        metrics.MODEL_INFO.labels(champion.version, "champion").set(1)
    metrics.MODEL_INFO.labels(online.version, "online").set(1)
    metrics.MODEL_INFO.labels(anomaly.version, "anomaly").set(1)
    evaluation = settings.checkpoints_dir / "evaluation.json"
    evaluator = (
        RollingEvaluator.load(evaluation)
        if evaluation.exists()
        else RollingEvaluator(5000, settings.review_threshold)
    )
    sink = sink if sink is not None else KafkaSink(settings.kafka_bootstrap)
    service = ScoringService(settings, pipeline, client, sink, live=live, rules_watcher=watcher)
    service.evaluator = evaluator
    if live:
        service.drift = DriftTracker(
            settings.models_dir, client, settings.drift_window, settings.drift_min_rows,
            settings.drift_lateness_seconds * 1000, settings.drift_log_seconds, online.version,
        )  # fmt: skip
    if use_registry:
        service.refresh_models(settings.models_dir, every_seconds=0)  # shadows too
    return service
