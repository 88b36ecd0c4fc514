"""Backtest on a small simulated file against a real Redis-protocol server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis

from engine.settings import Settings
from replay.backtest import DAY_MS, Period, run_backtest
from replay.merge import parse_time
from replay.simulate import simulate
from replay.sources import write_transactions
from tests.unit.test_features_kernels import assert_features_equal

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_backtest_scores_every_test_transaction_and_writes_reports(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    df = simulate(days=12, seed=2, n_customers=400, n_merchants=120)
    path = tmp_path / "tx.parquet"
    write_transactions(df, path)
    t0 = parse_time("2026-01-01")
    period = Period(t0, t0 + 7 * DAY_MS, t0 + 9 * DAY_MS, t0 + 12 * DAY_MS)
    settings = Settings(redis_url=redis_url, data_dir=tmp_path / "data")
    report = run_backtest(settings, path, period, tmp_path / "out", label_delay_ms=2 * DAY_MS)

    for key in ("auc_roc", "average_precision", "card_precision_at_100", "n_test",
                "n_test_frauds", "events_per_second"):  # fmt: skip
        assert key in report
    in_test = df[(df["ts"] >= period.test_start) & (df["ts"] < period.test_end)]
    preds = pd.read_parquet(tmp_path / "out" / "predictions.parquet")
    assert list(preds.columns) == ["event_id", "score", "decision"]
    assert sorted(preds["event_id"]) == sorted(in_test["event_id"])
    assert report["n_test_scored"] == len(in_test)
    # Evaluation drops cards already known compromised (the handbook's protocol).
    assert 0 < report["n_test"] <= len(in_test)
    assert report["n_test_frauds"] <= int(in_test["is_fraud"].sum())
    assert 0 <= report["card_precision_at_100"] <= report["oracle_card_precision_at_100"] <= 1
    assert 0.5 < report["auc_roc"] <= 1.0
    assert set(preds["decision"]) <= {"allow", "review", "block"}
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count("<img") >= 3 and "average_precision" in html


def test_parse_time() -> None:
    assert parse_time("2018-04-01") == 1522540800000
    assert parse_time("1522540800000") == 1522540800000


def test_feature_log_equals_the_live_path(redis_url: str, redis_client: redis.Redis) -> None:
    """Pass 1 (columns straight to the store, batches submitted ahead, labels in between) gives
    the features a worker computes from decoded messages, batch by batch."""
    from engine.build import build_service
    from engine.sinks import NullSink
    from replay.backtest import _labels, feature_log
    from replay.inprocess import encode, records_of

    df = simulate(days=10, seed=4, n_customers=300, n_merchants=80)
    df = df.sort_values("ts", kind="stable").reset_index(drop=True)
    labels, _ = _labels(df, None, DAY_MS)
    settings = Settings(redis_url=redis_url)
    redis_client.flushdb()
    service = build_service(settings, sink=NullSink(), use_registry=False, live=False)
    got, names, _ = feature_log(service, df, labels, batch_size=500)

    redis_client.flushdb()
    service = build_service(settings, sink=NullSink(), use_registry=False, live=False)
    want = []
    done = 0
    label_ts = labels["ts"].to_numpy()
    for start in range(0, len(df), 500):
        chunk = df.iloc[start : start + 500]
        upto = int(label_ts.searchsorted(int(chunk["ts"].iloc[0]), side="left"))
        if upto > done:
            lab = labels.iloc[done:upto]
            service.process_labels(encode(lab.to_dict("records"), "labels"))
            done = upto
        report = service.process_transactions(encode(records_of(chunk)))
        assert report.scored is not None
        want.append(report.scored.features)
    expected = np.vstack(want)
    assert names == service.pipeline.feature_names
    assert got.shape == expected.shape
    # equal up to the summation order of compacted buckets (compactions land a batch later)
    assert_features_equal(got, expected, names)
    assert np.array_equal(np.isnan(got), np.isnan(expected))
    fraud_rate = names.index("merchant_id_fraud_rate_7d_delay7d")
    assert expected[:, fraud_rate].max() > 0  # labels reached the features
