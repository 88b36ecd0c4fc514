"""Alerts that really fire: a real worker on real Tansu + Valkey, scraped by a real Prometheus
evaluating deploy/prometheus/alerts.yml (``for:`` and range windows shortened, nothing else), a
real Alertmanager posting to a webhook in the test.

1. A champion is trained on a simulated world (days 1-4, validated on 5-6); the worker's
   feature state is warmed up in-process with days 0-6. Then, through Kafka: normal traffic
   (day 7) raises no drift alert; drifted traffic (day 8 until 08:38: everyday categories'
   amounts x3, a new device population, a fraud wave: ``riskstream simulate --drift``) fires
   RiskstreamFeatureDrift for ``amount`` and RiskstreamScoreDrift; normal traffic again (the
   rest of day 8, whose first hour is still drifted, and day 9) resolves both.
2. A worker whose Redis dies stops scoring while transactions keep arriving:
   RiskstreamNoDecisions fires.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import redis

from engine.settings import Settings
from engine.sinks import ensure_topics
from engine.stack import EmbeddedStack
from engine.worker_process import WorkerProcess, metric_value, wait_until
from replay.inprocess import records_of
from replay.kafka_io import json_items, produce, producer
from replay.replay import ReplayOptions, replay_inprocess
from tests.drift_support import (
    DAY_MS,
    DRIFT_DAY,
    DRIFT_PHASE_END,
    ROOT,
    Monitoring,
    day_ms,
    train_champion,
    with_db,
    write_world,
)

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

SPEC = ROOT / "tests" / "drift_spec.yaml"
#: About one phase: when a phase ends, the window holds (almost) only its transactions.
WINDOW = 1500
#: Transactions per second produced (paced like a payment system, not one burst).
RATE = 400.0
DRIFT_ALERTS = ("RiskstreamFeatureDrift", "RiskstreamScoreDrift")


def _binary(name: str) -> str:
    path = f"/usr/bin/{name}"
    if not os.path.exists(path):
        pytest.skip(f"{path} not installed (make test-tools installs it)")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> tuple[Path, pd.DataFrame]:
    _binary("prometheus")
    _binary("prometheus-alertmanager")
    tmp = tmp_path_factory.mktemp("drift")
    frame = write_world(tmp / "world.parquet")
    settings = Settings(redis_url=redis_url, data_dir=tmp / "data", feature_spec=SPEC)
    train_champion(tmp / "world.parquet", settings)
    return tmp, frame


def _phase(frame: pd.DataFrame, start: float, end: float, prefix: str) -> list[dict[str, object]]:
    part = frame[(frame["ts"] >= day_ms(start)) & (frame["ts"] < day_ms(end))]
    recs = records_of(part)
    for r in recs:
        r["event_id"] = f"{prefix}-{r['event_id']}"
    return recs


def _firing(mon: Monitoring, names: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{a['labels']['alertname']}{{{a['labels'].get('feature', '')}}}"
        for a in mon.alertmanager_alerts()
        if a["labels"]["alertname"] in names
    )


def test_drift_fires_and_resolves_through_prometheus_and_alertmanager(
    trained: tuple[Path, pd.DataFrame], stack: dict[str, str], redis_url: str
) -> None:
    tmp, frame = trained
    worker_redis = with_db(redis_url, 6)
    redis.Redis.from_url(worker_redis).flushdb()
    settings = Settings(redis_url=worker_redis, data_dir=tmp / "data", feature_spec=SPEC)
    # the worker's windows, as a worker that has run for a week would have them
    replay_inprocess(
        ReplayOptions(transactions=tmp / "world.parquet", label_delay_ms=DAY_MS,
                      until_ms=day_ms(DRIFT_DAY - 1), progress=False),
        settings,
    )  # fmt: skip

    suffix = uuid.uuid4().hex[:8]
    kinds = ("TRANSACTIONS", "EVENTS", "LABELS", "SCORES", "REVIEW", "DEAD_LETTER")
    topics = {f"RISKSTREAM_TOPIC_{k}": f"{k.lower()}-{suffix}" for k in kinds}
    bootstrap = stack["RISKSTREAM_KAFKA_BOOTSTRAP"]
    ensure_topics(bootstrap, list(topics.values()), 1)
    env = {
        **stack, **topics, "RISKSTREAM_REDIS_URL": worker_redis,
        "RISKSTREAM_APP_ID": f"drift-{suffix}", "RISKSTREAM_DATA_DIR": str(tmp / "data"),
        "RISKSTREAM_TOPIC_PARTITIONS": "1", "RISKSTREAM_FEATURE_SPEC": str(SPEC),
        "RISKSTREAM_DRIFT_WINDOW": str(WINDOW), "RISKSTREAM_DRIFT_MIN_ROWS": "1000",
    }  # fmt: skip
    prod = producer(bootstrap)
    sent = 0
    timeline: list[str] = []

    def stream(start: float, end: float, label: str) -> float:
        nonlocal sent
        recs = _phase(frame, start, end, label)
        t = time.time()
        produce(prod, topics["RISKSTREAM_TOPIC_TRANSACTIONS"], json_items(recs, "card_id"), RATE)
        sent += len(recs)
        assert wait_until(
            lambda: metric_value(worker.metrics(), "riskstream_decisions_total") >= sent, 240
        ), f"worker did not decide {sent} transactions; see {tmp / 'worker.log'}"
        timeline.append(f"{t - t0:6.1f}s  {label}: {len(recs)} transactions, days {start}-{end}")
        timeline.append(f"{time.time() - t0:6.1f}s  {label}: all decided")
        return t

    with (
        WorkerProcess(env, tmp / "worker.log") as worker,
        Monitoring(tmp / "monitoring", [f"127.0.0.1:{worker.port}"]) as mon,
    ):
        t0 = time.time()
        stream(DRIFT_DAY - 1, DRIFT_DAY, "normal")
        time.sleep(8)  # > for: 3s plus a scrape and an evaluation
        psi = mon.query('riskstream_feature_psi{feature="amount",window="sliding"}')
        assert psi and float(psi[0]["value"][1]) < 0.25, psi
        assert _firing(mon, DRIFT_ALERTS) == []
        assert not [r for r in mon.received if r.labels["alertname"] in DRIFT_ALERTS]

        shift = stream(DRIFT_DAY, DRIFT_PHASE_END, "drift")
        timeline.append(f"{shift - t0:6.1f}s  shift starts")
        assert wait_until(
            lambda: (
                mon.first("firing", "RiskstreamFeatureDrift", feature="amount")
                and mon.first("firing", "RiskstreamScoreDrift")
            ),
            90,
        ), f"alerts received: {[(r.status, r.labels) for r in mon.received]}"

        back = stream(DRIFT_PHASE_END, DRIFT_DAY + 2, "normal again")
        watched = {"RiskstreamFeatureDrift{amount}", "RiskstreamScoreDrift{}"}
        assert wait_until(
            lambda: (
                not watched & set(_firing(mon, DRIFT_ALERTS))
                and mon.last("resolved", "RiskstreamFeatureDrift", feature="amount")
                and mon.last("resolved", "RiskstreamScoreDrift")
            ),
            90,
        ), f"alerts received: {[(r.status, r.labels) for r in mon.received]}"
        for r in mon.received:
            name = r.labels["alertname"] + (f"{{feature={r.labels['feature']}}}"
                                            if "feature" in r.labels else "")  # fmt: skip
            timeline.append(f"{r.at - t0:6.1f}s  Alertmanager -> webhook: {name} {r.status}")
        print("\n".join(sorted(timeline, key=lambda s: float(s.split("s", 1)[0]))))
        for name, labels in (
            ("RiskstreamScoreDrift", {}),
            ("RiskstreamFeatureDrift", {"feature": "amount"}),
        ):
            fired = mon.first("firing", name, **labels)
            resolved = mon.last("resolved", name, **labels)
            assert fired and resolved and shift < fired.at < back < resolved.at, name


@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[EmbeddedStack]:
    """A stack of its own: the test kills its Valkey."""
    with EmbeddedStack(log_dir=tmp_path / "stack") as s:
        yield s


def test_a_worker_that_stops_scoring_fires_no_decisions(
    own_stack: EmbeddedStack, tmp_path: Path
) -> None:
    _binary("prometheus")
    _binary("prometheus-alertmanager")
    (tmp_path / "data").mkdir()
    env = {**own_stack.env(), "RISKSTREAM_DATA_DIR": str(tmp_path / "data"),
           "RISKSTREAM_TOPIC_PARTITIONS": "1"}  # fmt: skip
    settings = Settings()
    ensure_topics(own_stack.kafka_bootstrap, settings.topics(), 1)
    prod = producer(own_stack.kafka_bootstrap)
    recs = [{"event_id": f"nd-{i}", "ts": 1767225600000 + i * 1000, "card_id": f"card_{i % 9}",
             "merchant_id": "m1", "amount": 10.0 + i} for i in range(400)]  # fmt: skip
    with (
        WorkerProcess(env, tmp_path / "worker.log") as worker,
        Monitoring(tmp_path / "monitoring", [f"127.0.0.1:{worker.port}"]) as mon,
    ):
        t0 = time.time()
        produce(prod, settings.topic_transactions, json_items(recs[:200], "card_id"))
        assert wait_until(
            lambda: metric_value(worker.metrics(), "riskstream_decisions_total") >= 200, 240
        )
        time.sleep(5)
        assert mon.first("firing", "RiskstreamNoDecisions") is None
        valkey = next(
            p for p in own_stack._procs if p.args[1:3] == ["--port", str(own_stack.redis_port)]
        )
        os.killpg(valkey.pid, signal.SIGKILL)  # the feature store is gone: scoring fails
        t_kill = time.time()
        produce(prod, settings.topic_transactions, json_items(recs[200:], "card_id"))
        assert wait_until(lambda: mon.first("firing", "RiskstreamNoDecisions"), 120), (
            f"alerts received: {[(r.status, r.labels) for r in mon.received]}"
        )
        fired = mon.first("firing", "RiskstreamNoDecisions")
        assert fired is not None
        text = worker.metrics()
        assert metric_value(text, "riskstream_decisions_total") == 200
        assert metric_value(text, "riskstream_batch_retries_total") > 0
        assert worker.alive()
        print(f"\nRedis killed at {t_kill - t0:.1f}s; RiskstreamNoDecisions received at "
              f"{fired.at - t0:.1f}s")  # fmt: skip
