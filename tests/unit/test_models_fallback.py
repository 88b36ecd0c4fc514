"""Fallback: whatever goes wrong with the model, the real Pipeline decides with rules, flagged.

The feature store and rule set are small in-test stand-ins (the Redis store has its own
integration tests); the Pipeline, Policy, LightGBM scorer and registry are the real ones.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest

from engine.pipeline import Pipeline
from engine.policy import Hit, Policy
from models.errors import ModelLoadError, UnknownModelError
from models.lgbm import LightGBMScorer
from models.registry import ModelRegistry

NAMES = ["amount_sum", "count_1h", "count_24h"]


class StubStore:
    """Features = (amount, i % 7, i % 30) per event; the names are configurable."""

    entity_fields = ("card_id",)
    account_event_fields = ("customer_id",)
    late_events = 0

    def __init__(self, names: Sequence[str] = NAMES) -> None:
        self._names = list(names)

    @property
    def feature_names(self) -> list[str]:
        return list(self._names)

    def update_batch(
        self,
        event_ids: Sequence[str],
        ts_ms: Any,
        amounts: Any,
        entities: Mapping[str, Any],
        fields: Mapping[str, Any] | None = None,
    ) -> np.ndarray:
        n = len(event_ids)
        self.redelivered = np.zeros(n, dtype=bool)
        i = np.arange(n, dtype=np.float64)
        cols = [np.asarray(amounts, dtype=np.float64), i % 7, i % 30]
        return np.column_stack(cols[: len(self._names)])


class StubRules:
    """Block above 5,000; review from the high-risk country KP."""

    version = "stub-rules-1"

    def evaluate_batch(
        self, events: Sequence[Mapping[str, Any]], features: Any, feature_names: Sequence[str]
    ) -> list[list[Any]]:
        out: list[list[Any]] = []
        for e in events:
            hits: list[Any] = []
            if e["amount"] > 5000:
                hits.append(Hit("large", "block", "large_amount"))
            if e.get("country") == "KP":
                hits.append(Hit("country", "review", "high_risk_country"))
            out.append(hits)
        return out


class Exploding:
    """A champion that loaded fine but fails while scoring."""

    version = "0123456789ab"
    feature_names = NAMES

    def score_batch(self, features: np.ndarray) -> np.ndarray:
        msg = "boom"
        raise RuntimeError(msg)

    def explain_batch(self, features: np.ndarray, top: int = 3) -> list[list[Any]]:
        msg = "never explained"
        raise AssertionError(msg)


def scorer(names: Sequence[str] = NAMES) -> LightGBMScorer:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, len(names)))
    y = (x[:, 0] > 1.0).astype(int)
    params = {"objective": "binary", "seed": 1, "deterministic": True, "verbosity": -1,
              "force_row_wise": True, "num_threads": 1}  # fmt: skip
    return LightGBMScorer(lgb.train(params, lgb.Dataset(x, y, feature_name=list(names)), 10))


def records() -> list[dict[str, Any]]:
    rows = [{"event_id": f"e{i}", "ts": 1767225600000 + i, "card_id": f"c{i % 3}",
             "merchant_id": "m", "amount": 20.0 + i} for i in range(8)]  # fmt: skip
    rows[2]["amount"] = 9000.0
    rows[5]["country"] = "KP"
    return rows


def pipeline(champion: Any) -> Pipeline:
    return Pipeline(StubStore(), StubRules(), Policy(0.5, 0.9), champion=champion)


def assert_rules_only(p: Pipeline, reason: str) -> None:
    out = p.score_batch(records())
    ds = out.decisions
    assert {d.mode for d in ds} == {"degraded"}
    assert all(d.reasons[-1] == f"degraded:{reason}" for d in ds)
    assert [d.score for d in ds] == [0.0] * len(ds)
    assert [d.decision for d in ds] == ["allow", "allow", "block", "allow", "allow", "review",
                                        "allow", "allow"]  # fmt: skip
    assert "rule:large" in ds[2].reasons and "rule:country" in ds[5].reasons
    assert all(d.contributions == [] for d in ds)


def test_no_champion_is_rules_only_model_unavailable() -> None:
    assert_rules_only(pipeline(None), "model_unavailable")


def test_missing_model_file_leaves_the_engine_rules_only(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    v = reg.register(scorer())
    reg.promote(v)
    (tmp_path / v / "model.txt").unlink()
    with pytest.raises(UnknownModelError):
        reg.load_champion()
    assert_rules_only(pipeline(None), "model_unavailable")  # what build_service falls back to


def test_corrupt_model_file_raises_clearly_and_engine_keeps_rules(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    v = reg.register(scorer())
    reg.promote(v)
    (tmp_path / v / "model.txt").write_text("tree\ngarbage=1\n")
    with pytest.raises(ModelLoadError, match="corrupt, truncated or altered"):
        reg.load_champion()
    assert_rules_only(pipeline(None), "model_unavailable")


def test_feature_vector_mismatch_is_degraded_with_reason(caplog: pytest.LogCaptureFixture) -> None:
    champion = scorer(["amount_sum", "merchant_fraud_rate_7d", "count_24h"])  # store lacks one
    with caplog.at_level("ERROR"):
        assert_rules_only(pipeline(champion), "feature_mismatch")
    assert "merchant_fraud_rate_7d" in caplog.text


def test_extra_store_columns_are_selected_by_name() -> None:
    champion = scorer(["amount_sum", "count_1h"])
    p = Pipeline(StubStore(["amount_sum", "count_1h"]), StubRules(), Policy(), champion=champion)
    p.features = StubStore(["amount_sum", "count_1h", "count_24h"])  # store grew a column
    ok = p.score_batch(records())  # extra columns are dropped by name: still normal
    assert {d.mode for d in ok.decisions} == {"normal"}


def test_exception_while_scoring_is_degraded_model_error(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("ERROR"):
        assert_rules_only(pipeline(Exploding()), "model_error")
    assert "failed to score" in caplog.text and "boom" in caplog.text


def test_recovers_when_a_good_model_is_swapped_in() -> None:
    p = pipeline(Exploding())
    assert {d.mode for d in p.score_batch(records()).decisions} == {"degraded"}
    good = scorer()
    p.champion = good
    out = p.score_batch(records())
    assert {d.mode for d in out.decisions} == {"normal"}
    assert {d.model for d in out.decisions} == {good.version}
    assert not any(r.startswith("degraded") for d in out.decisions for r in d.reasons)


class SignallingChampion:
    """A champion that says when it has begun scoring."""

    version = "0123456789ac"
    feature_names = NAMES

    def __init__(self, started: threading.Event) -> None:
        self.started = started

    def score_batch(self, features: np.ndarray) -> np.ndarray:
        self.started.set()
        return np.full(len(features), 0.95)

    def explain_batch(self, features: np.ndarray, top: int = 3) -> list[list[Any]]:
        return [[] for _ in range(len(features))]


class RulesAfterTheModelStarted(StubRules):
    """Rules that run only once the model is scoring: if the Pipeline scored the model after
    the rules (one thread), they would wait in vain and fail the batch."""

    def __init__(self, model_started: threading.Event) -> None:
        self.model_started = model_started

    def evaluate_batch(
        self, events: Sequence[Mapping[str, Any]], features: Any, feature_names: Sequence[str]
    ) -> list[list[Any]]:
        if not self.model_started.wait(10):
            msg = "the model did not score while the rules ran"
            raise TimeoutError(msg)
        return super().evaluate_batch(events, features, feature_names)


def test_the_champion_scores_while_the_rules_run() -> None:
    started = threading.Event()
    p = Pipeline(StubStore(), RulesAfterTheModelStarted(started), Policy(0.5, 0.9),
                 champion=SignallingChampion(started))  # fmt: skip
    out = p.score_batch(records())
    assert {d.mode for d in out.decisions} == {"normal"}
    assert [d.score for d in out.decisions] == [0.95] * 8
    assert {d.decision for d in out.decisions} == {"block"}
