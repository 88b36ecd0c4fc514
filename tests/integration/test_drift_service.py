"""Drift statistics through the real scoring service (real Valkey, in-process) and
``riskstream drift report`` over the workers' hourly log and over a file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pandas as pd
import pytest
import redis

from engine import metrics
from engine.build import build_service
from engine.drift import HIST_PREFIX
from engine.schemas import RawMessage
from engine.settings import Settings
from engine.sinks import MemorySink
from engine.worker_process import metric_value, wait_until
from replay.inprocess import run_inprocess
from replay.replay import ReplayOptions, replay_inprocess
from replay.sources import write_transactions
from tests.drift_support import (
    DAY_MS,
    DRIFT_DAY,
    DRIFT_PHASE_END,
    ROOT,
    day_ms,
    train_champion,
    with_db,
    write_world,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SPEC = ROOT / "tests" / "drift_spec.yaml"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> tuple[Path, pd.DataFrame]:
    tmp = tmp_path_factory.mktemp("drift-service")
    frame = write_world(tmp / "world.parquet")
    settings = Settings(redis_url=redis_url, data_dir=tmp / "data", feature_spec=SPEC)
    train_champion(tmp / "world.parquet", settings)
    return tmp, frame


def _day(frame: pd.DataFrame, day: int) -> pd.DataFrame:
    return frame[(frame["ts"] >= day_ms(day)) & (frame["ts"] < day_ms(day + 1))]


def _gauge(name: str, **labels: str) -> float:
    return metric_value(metrics.exposition()[0].decode(), name, labels)


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True,
        env={**os.environ, **env}, check=False, timeout=600,
    )  # fmt: skip


def test_live_service_tracks_drift_logs_hours_and_reports_since(
    trained: tuple[Path, pd.DataFrame], redis_url: str, tmp_path: Path
) -> None:
    tmp, frame = trained
    url = with_db(redis_url, 7)
    redis.Redis.from_url(url).flushdb()
    settings = Settings(
        redis_url=url, data_dir=tmp / "data", feature_spec=SPEC, drift_window=1500,
        drift_min_rows=1000, drift_log_seconds=0.001,
    )  # fmt: skip
    replay_inprocess(
        ReplayOptions(transactions=tmp / "world.parquet", label_delay_ms=DAY_MS,
                      until_ms=day_ms(DRIFT_DAY - 1), progress=False),
        settings,
    )  # fmt: skip
    service = build_service(settings, sink=MemorySink())
    assert service.drift is not None

    normal = _day(frame, DRIFT_DAY - 1).iloc[:1500]
    run_inprocess(service, normal, 500, progress=False)
    assert _gauge("riskstream_drift_window_transactions", window="sliding") == 1500
    assert _gauge("riskstream_feature_psi", feature="amount", window="sliding") < 0.1
    assert _gauge("riskstream_score_psi", window="sliding") < 0.25
    shares = sum(
        _gauge("riskstream_decision_ratio", decision=d, window="sliding")
        for d in ("allow", "review", "block")
    )
    assert shares == pytest.approx(1.0)
    # calendar features are not monitored: a window of hours always differs from all-day
    assert "hour_of_day" not in metrics.exposition()[0].decode().split("riskstream_feature_psi")[1]

    drifted = frame[(frame["ts"] >= day_ms(DRIFT_DAY)) & (frame["ts"] < day_ms(DRIFT_PHASE_END))]
    run_inprocess(service, drifted, 500, progress=False)
    assert _gauge("riskstream_feature_psi", feature="amount", window="sliding") > 0.25
    assert _gauge("riskstream_score_psi", window="sliding") > 0.25
    assert _gauge("riskstream_feature_ks", feature="amount", window="sliding") > 0.1
    # hours of event time close as the stream moves on
    assert _gauge("riskstream_drift_window_transactions", window="hour") > 0

    # labels: the fraud share among them, against training's
    rows = normal[["event_id", "ts", "is_fraud"]].itertuples(index=False)
    labels = [
        RawMessage(orjson.dumps({"event_id": e, "ts": int(t) + DAY_MS, "is_fraud": bool(y)}),
                   "labels", 0, i)
        for i, (e, t, y) in enumerate(rows)
    ]  # fmt: skip
    service.process_labels(labels)
    assert _gauge("riskstream_label_fraud_ratio") == pytest.approx(normal["is_fraud"].mean())
    assert 0 < _gauge("riskstream_training_fraud_ratio") < 0.1

    # every transaction is in the hourly log in Redis, under the champion's version
    version = service.pipeline.champion.version  # type: ignore[union-attr]
    client = redis.Redis.from_url(url)

    def logged() -> int:  # written by the tracker's own thread, within log_seconds
        keys = client.scan_iter(match=f"{HIST_PREFIX}{version}:*")
        return sum(int(client.hget(k, "#n") or 0) for k in keys)

    assert wait_until(lambda: logged() == len(normal) + len(drifted), 10), logged()

    out = tmp_path / "since"
    env = {"RISKSTREAM_REDIS_URL": url, "RISKSTREAM_DATA_DIR": str(tmp / "data")}
    res = _cli("drift", "report", "--since", str(day_ms(DRIFT_DAY - 1)), "--out", str(out),
               env=env)  # fmt: skip
    assert res.returncode == 0, res.stderr
    report = json.loads((out / "drift.json").read_text())
    assert report["model"] == version and report["period"] == "hour"
    assert report["transactions"] == len(normal) + len(drifted)
    psi = [c["psi"] for c in report["columns"] if c["psi"] is not None]
    assert psi == sorted(psi, reverse=True)  # sorted by drift
    amount = next(c for c in report["columns"] if c["name"] == "amount")
    assert len(amount["over_time"]) >= 10  # hour by hour
    drift_hours = [p["psi"] for p in amount["over_time"] if p["start"] >= "2026-01-09"]
    calm_hours = [p["psi"] for p in amount["over_time"] if p["start"] < "2026-01-09"]
    assert max(p for p in drift_hours if p is not None) > max(
        p for p in calm_hours if p is not None
    )
    assert sum(amount["histogram"]["reference"]) == pytest.approx(1.0)
    page = (out / "drift.html").read_text()
    assert page.count("data:image/png;base64,") == 2 * len(report["columns"])
    assert "http://" not in page and "https://" not in page  # self-contained


def test_drift_report_over_a_file_and_clear_errors(
    trained: tuple[Path, pd.DataFrame], redis_url: str, tmp_path: Path
) -> None:
    tmp, frame = trained
    part = frame[(frame["ts"] >= day_ms(DRIFT_DAY - 1)) & (frame["ts"] < day_ms(DRIFT_DAY + 1))]
    path = tmp_path / "two-days.parquet"
    write_transactions(part, path)
    env = {"RISKSTREAM_REDIS_URL": with_db(redis_url, 8), "RISKSTREAM_DATA_DIR": str(tmp / "data"),
           "RISKSTREAM_FEATURE_SPEC": str(SPEC)}  # fmt: skip
    out = tmp_path / "file"
    res = _cli("drift", "report", "--transactions", str(path), "--out", str(out),
               "--scratch-db", "9", env=env)  # fmt: skip
    assert res.returncode == 0, res.stderr
    report = json.loads((out / "drift.json").read_text())
    assert report["transactions"] == len(part)
    assert report["period"] == "hour"
    amount = next(c for c in report["columns"] if c["name"] == "amount")
    day2 = [p["psi"] for p in amount["over_time"] if p["start"] >= "2026-01-09"]
    day1 = [p["psi"] for p in amount["over_time"] if p["start"] < "2026-01-09"]
    assert sum(p or 0 for p in day2) / len(day2) > 2 * sum(p or 0 for p in day1) / len(day1)
    assert (out / "drift.html").stat().st_size > 10_000

    for args, message in (
        (["--out", str(out)], "exactly one of --transactions FILE or --since T"),
        (["--since", "yesterday-ish", "--out", str(out)], "yesterday-ish"),
        (["--transactions", "/nope.parquet", "--out", str(out)], "no such file"),
        (["--since", "2026-01-01", "--model", "0123456789ab", "--out", str(out)], "0123456789ab"),
    ):
        res = _cli("drift", "report", *args, env=env)
        assert res.returncode == 2, res.stderr
        assert message in res.stderr and "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
