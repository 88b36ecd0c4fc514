"""Rolling per-version evaluation (AP, review precision) and reference histograms / PSI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from models.evaluation import RollingEvaluator, average_precision
from models.reference import (
    bin_counts,
    population_stability_index,
    reference_histogram,
    reference_histograms,
)


@pytest.mark.parametrize("decimals", [0, 1, 2, 6])
def test_average_precision_equals_sklearn_including_ties(decimals: int) -> None:
    rng = np.random.default_rng(decimals)
    for _ in range(10):
        y = rng.random(700) < 0.05
        s = np.round(rng.random(700) + 0.4 * y, decimals).astype(np.float64)
        if y.any():
            expected = average_precision_score(y, s)
            assert average_precision(s, y) == pytest.approx(expected, abs=1e-12)
    assert math.isnan(average_precision(np.array([0.1, 0.2]), np.array([False, False])))


def test_rolling_window_per_version() -> None:
    ev = RollingEvaluator(window=4, review_threshold=0.5)
    assert math.isnan(ev.average_precision("v1")) and ev.count("v1") == 0
    ev.update("v1", [0.9, 0.1, 0.8, 0.2], [True, False, False, False])
    assert ev.average_precision("v1") == 1.0
    assert ev.review_precision("v1") == 0.5  # flagged 0.9 (fraud) and 0.8 (legit)
    ev.update("v1", [0.05, 0.95], [True, False])  # window keeps the last 4 rows
    assert ev.count("v1") == 4
    assert ev.average_precision("v1") == pytest.approx(
        average_precision_score([False, False, True, False], [0.8, 0.2, 0.05, 0.95])
    )
    ev.update("v2", [0.7], [True], flagged=[False])  # actual decisions override the threshold
    assert math.isnan(ev.review_precision("v2"))
    snap = ev.snapshot()
    assert set(snap) == {"v1", "v2"} and snap["v1"]["n"] == 4 and snap["v2"]["frauds"] == 1
    with pytest.raises(ValueError, match="length"):
        ev.update("v1", [0.1, 0.2], [True])
    ev.forget("v2")
    assert ev.versions() == ["v1"]


def test_update_records_groups_by_version_and_save_load(tmp_path: Path) -> None:
    ev = RollingEvaluator(window=100)
    recs = [
        {"scores": {"champ": 0.9, "river": 0.2}, "flagged": {"champ": True}},
        {"scores": {"champ": 0.1, "river": 0.7}, "flagged": {"champ": False}},
        {"scores": {"champ": 0.3}, "flagged": {"champ": True}},  # river not loaded then
    ]
    ev.update_records(recs, [True, False, False])
    assert ev.count("champ") == 3 and ev.count("river") == 2
    assert ev.review_precision("champ") == 0.5  # the decisions, not the threshold
    assert ev.review_precision("river") == 0.0  # threshold 0.5: flagged the legit one
    ev.save(tmp_path / "ev.json")
    back = RollingEvaluator.load(tmp_path / "ev.json")
    assert back.snapshot() == ev.snapshot()


def test_reference_histogram_and_psi() -> None:
    rng = np.random.default_rng(0)
    v = rng.lognormal(size=10_000)
    v[:10] = np.nan
    h = reference_histogram(v)
    assert h["n"] == 10_000 and h["missing"] == 10 and sum(h["counts"]) == 9_990
    assert len(h["counts"]) == len(h["edges"]) + 1 == 10
    assert max(h["counts"]) - min(h["counts"]) <= 2  # deciles: equal shares
    same = rng.lognormal(size=5_000)
    assert population_stability_index(h, same) < 0.02
    assert population_stability_index(h, same * 3) > 0.25
    counts = reference_histogram(np.array([0, 0, 1, 1, 1, 2, 5, 5.0]))
    assert counts["edges"] == [0.0, 1.0, 2.0, 5.0] and counts["counts"] == [2, 3, 1, 2, 0]
    assert bin_counts(counts, [1, 1, 9, np.nan]) == [0, 2, 0, 0, 1]
    empty = reference_histogram(np.array([np.nan]))
    assert empty["counts"] == [0] and math.isnan(population_stability_index(empty, [1.0]))
    hs = reference_histograms(np.c_[v, v * 2], ["a", "b"])
    assert list(hs) == ["a", "b"] and hs["a"]["counts"] == hs["b"]["counts"]
