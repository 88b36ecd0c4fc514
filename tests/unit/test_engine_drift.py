"""The worker-side drift tracker: never fails a batch, exports gauges, round-trips hour counts."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from engine import metrics
from engine.drift import DriftTracker, hour_fields, parse_hour
from engine.pipeline import Decision, ScoredBatch
from engine.worker_process import metric_value
from models.drift import DriftReference, HourCounts
from models.reference import drift_reference


def _batch(decisions: list[str], names: list[str], model: str = "none") -> ScoredBatch:
    ds = [
        Decision(event_id=f"e{i}", card_id="c", ts=1767225600000 + i, amount=1.0, score=0.1,
                 decision=d, reasons=[], rule_set="r", model=model, shadow={})
        for i, d in enumerate(decisions)
    ]  # fmt: skip
    return ScoredBatch(ds, np.zeros((len(ds), len(names))), names, {})


def test_without_a_champion_only_decision_shares_are_tracked(tmp_path: Path) -> None:
    tracker = DriftTracker(tmp_path / "models", None, window=10, min_rows=1)
    tracker.observe_batch(_batch(["allow", "allow", "review", "block"], ["f"]))
    text = metrics.exposition()[0].decode()
    review = {"decision": "review", "window": "sliding"}
    assert metric_value(text, "riskstream_decision_ratio", review) == 0.25
    assert metric_value(text, "riskstream_drift_window_transactions", {"window": "sliding"}) == 4


def test_a_failing_statistic_never_fails_the_batch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tracker = DriftTracker(tmp_path / "models", None, window=10, min_rows=1)
    tracker.observe_batch(_batch(["allow"], ["f"]))  # loads the (empty) reference

    def boom(*_: object) -> None:
        msg = "a bug in the statistics"
        raise RuntimeError(msg)

    tracker.monitor.update_batch = boom  # type: ignore[method-assign]
    tracker.monitor.update_labels = boom  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR):
        tracker.observe_batch(_batch(["allow"], ["f"]))  # no exception
        tracker.observe_labels([{"scores": {}}], [True])
    assert "drift statistics failed" in caplog.text


def test_hour_counts_round_trip_through_redis_fields() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 2))
    ref = DriftReference.from_metadata(drift_reference(x, ["a", "b"], rng.random(500)), ["a", "b"])
    bins = ref.bin_batch(np.c_[x[:50], rng.random(50)])
    hc = HourCounts(7, ref.counts(bins), 50, np.array([40, 8, 2]))
    flat = hour_fields(ref, hc)
    raw = {str(k).encode(): str(v).encode() for k, v in zip(flat[::2], flat[1::2], strict=True)}
    raw[b"gone_feature|3"] = b"9"  # a column this reference does not know is ignored
    back = parse_hour(ref, raw)
    assert back.n == 50 and back.decisions.tolist() == [40, 8, 2]
    assert (back.counts == hc.counts).all()
