"""replay.training.replay_history: labels reach the service at their time, never earlier."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import orjson
import pandas as pd
import pytest

from engine.pipeline import Decision, ScoredBatch
from engine.schemas import RawMessage
from engine.service import BatchReport
from replay.training import parse_time, replay_history

NAMES = ["f0", "f1"]


class _Features:
    feature_names = NAMES


class _Pipeline:
    features = _Features()
    feature_names = _Features.feature_names
    online = None


class RecordingService:
    """Records the order in which transactions and labels reach it."""

    def __init__(self) -> None:
        self.pipeline = _Pipeline()
        self.timeline: list[tuple[str, int, str]] = []  # (kind, ts, event_id)
        self.batches: list[int] = []

    def process_transactions(self, messages: Sequence[RawMessage]) -> BatchReport:
        recs = [orjson.loads(m.value) for m in messages]
        self.batches.append(len(recs))
        self.timeline += [("tx", r["ts"], r["event_id"]) for r in recs]
        ds = [Decision(r["event_id"], r["card_id"], r["ts"], r["amount"], 0.0,
                       "review" if r["amount"] > 100 else "allow", [], "r", "none", {})
              for r in recs]  # fmt: skip
        x = np.array([[r["amount"], 1.0] for r in recs])
        return BatchReport(valid=len(recs), scored=ScoredBatch(ds, x, NAMES, {}))

    def process_labels(self, messages: Sequence[RawMessage]) -> BatchReport:
        recs = [orjson.loads(m.value) for m in messages]
        self.timeline += [("label", r["ts"], r["event_id"]) for r in recs]
        return BatchReport(valid=len(recs))


@pytest.mark.parametrize("lag", [0, 60_000, 3_600_000])
def test_labels_arrive_in_event_time_and_never_early(lag: int) -> None:
    rng = np.random.default_rng(lag)
    n = 3000
    ts = np.sort(rng.integers(0, 5 * 86_400_000, n))
    tx = pd.DataFrame({
        "event_id": [f"e{i}" for i in range(n)], "ts": ts, "card_id": "c", "merchant_id": "m",
        "amount": rng.uniform(1, 200, n),
    })  # fmt: skip
    delay = rng.integers(0, 86_400_000, n)
    delay[::50] = 0  # a label at the very instant of its transaction
    labels = pd.DataFrame(
        {"event_id": tx["event_id"], "ts": ts + delay, "is_fraud": rng.random(n) < 0.1}
    ).sort_values("ts", kind="stable")
    svc = RecordingService()
    out = replay_history(svc, tx, labels, batch_size=200, label_lag_ms=lag,  # type: ignore[arg-type]
                         progress=False)  # fmt: skip

    assert out.event_ids == tx["event_id"].tolist()
    np.testing.assert_array_equal(out.features[:, 0], tx["amount"].to_numpy())
    np.testing.assert_array_equal(out.rules, (tx["amount"] > 100).to_numpy().astype(float))
    assert max(svc.batches) <= 200
    position = {(k, e): i for i, (k, _, e) in enumerate(svc.timeline)}
    tx_pos = np.array([position[("tx", e)] for e in tx["event_id"]])
    due = labels[labels["ts"] <= ts[-1]]
    late = labels[labels["ts"] > ts[-1]]  # after the last transaction: nothing could see them
    assert not any(("label", e) in position for e in late["event_id"])
    for _, row in due.iterrows():
        p = position[("label", row["event_id"])]
        seen_by = ts[tx_pos > p]  # transactions processed after the label
        not_seen_by = ts[tx_pos < p]
        assert (seen_by > row["ts"]).all()  # no leakage: only later transactions see it
        # and it is never late by more than the lag
        assert (not_seen_by <= row["ts"] + lag).all()
    assert len(svc.timeline) == n + len(due)


def test_parse_time() -> None:
    assert parse_time("2026-01-01") == 1767225600000
    assert parse_time("2026-01-01T01:00:00+01:00") == 1767225600000
    assert parse_time("1767225600000") == 1767225600000
    with pytest.raises(ValueError, match="not a time"):
        parse_time("yesterday-ish")
