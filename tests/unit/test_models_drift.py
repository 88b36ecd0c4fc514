"""Drift statistics: the vectorised window counts agree with the plain definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import ks_2samp

from models.drift import SCORE, DriftMonitor, DriftReference, decision_codes
from models.reference import (
    KS_BINS,
    population_stability_index,
    reference_histogram,
    reference_histograms,
)

HOUR = 3_600_000


def _reference(train: np.ndarray, score: np.ndarray, names: list[str]) -> DriftReference:
    meta = {
        "features": reference_histograms(train, names),
        "features_ks": reference_histograms(train, names, KS_BINS),
        "score": reference_histogram(score),
        "score_ks": reference_histogram(score, KS_BINS),
        "fraud_rate": 0.01,
    }
    return DriftReference.from_metadata(meta, names, "v1")


def _data(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    return np.c_[
        rng.lognormal(3 + shift, 0.6, n),  # continuous
        rng.poisson(2 + 4 * shift, n).astype(float),  # discrete
        rng.normal(0, 1, n),  # stays put
    ]


def _ks_on_grid(ref_values: np.ndarray, cur: np.ndarray, edges: np.ndarray) -> float:
    """The two-sample KS statistic restricted to ``edges`` (what the monitor computes)."""
    r = np.sort(ref_values[np.isfinite(ref_values)])
    c = np.sort(cur[np.isfinite(cur)])
    fr = np.searchsorted(r, edges, side="right") / len(r)
    fc = np.searchsorted(c, edges, side="right") / len(c)
    return float(np.max(np.abs(fr - fc)))


def test_sliding_window_matches_plain_psi_ks_and_missing() -> None:
    rng = np.random.default_rng(0)
    names = ["amount", "count", "noise"]
    train = _data(rng, 20000)
    ref_score = rng.beta(1, 20, 20000)
    ref = _reference(train, ref_score, names)
    assert ref.names == [*names, SCORE] and ref.fraud_rate == 0.01
    window = 3000
    mon = DriftMonitor(ref, window=window, min_rows=100)
    rows, scores = [], []
    t0 = 1_767_225_600_000
    for b in range(7):  # 7 batches of 1000 > window: the ring wraps and evicts
        x = _data(rng, 1000, shift=0.5 if b >= 4 else 0.0)
        x[rng.random(1000) < 0.05, 1] = np.nan
        s = rng.beta(1, 20 if b < 4 else 5, 1000)
        mon.update_batch(x, s, np.full(1000, t0 + b * 60_000), decision_codes(["allow"] * 1000))
        rows.append(x)
        scores.append(s)
    cur = np.vstack(rows)[-window:]
    cur_s = np.concatenate(scores)[-window:]
    st = mon.sliding()
    assert st.n == window == mon.rows
    hists = reference_histograms(train, names)
    ks_hists = reference_histograms(train, names, KS_BINS)
    for j, name in enumerate(names):
        assert st.psi[j] == pytest.approx(population_stability_index(hists[name], cur[:, j]))
        edges = np.asarray(ks_hists[name]["edges"])
        assert st.ks[j] == pytest.approx(_ks_on_grid(train[:, j], cur[:, j], edges))
        assert st.missing_ratio[j] == pytest.approx(np.mean(~np.isfinite(cur[:, j])))
    assert st.psi[-1] == pytest.approx(
        population_stability_index(reference_histogram(ref_score), cur_s)
    )
    # the shifted columns drifted, the other did not
    assert st.psi[0] > 0.25 and st.psi[1] > 0.25 and st.psi[2] < 0.05 and st.psi[3] > 0.25
    # on a 1 % grid the binned KS is close to scipy's exact two-sample statistic
    exact = ks_2samp(train[:, 0], cur[:, 0]).statistic
    assert abs(st.ks[0] - exact) < 0.02
    assert st.ks[2] < 0.05


def test_min_rows_hides_statistics_of_a_small_window() -> None:
    rng = np.random.default_rng(1)
    ref = _reference(_data(rng, 2000), rng.random(2000), ["a", "b", "c"])
    mon = DriftMonitor(ref, window=1000, min_rows=500)
    mon.update_batch(_data(rng, 100), rng.random(100), np.zeros(100, dtype=np.int64),
                     np.zeros(100, dtype=np.int64))  # fmt: skip
    st = mon.sliding()
    assert np.isnan(st.psi).all() and np.isnan(st.ks).all()


def test_hours_close_with_the_event_time_watermark_and_counts_add_up() -> None:
    rng = np.random.default_rng(2)
    names = ["a", "b", "c"]
    ref = _reference(_data(rng, 5000), rng.random(5000), names)
    mon = DriftMonitor(ref, window=10_000, min_rows=10, lateness_ms=300_000)
    t0 = 1_767_225_600_000  # an hour boundary
    batches = []
    for minute in range(0, 150, 10):
        ts = t0 + minute * 60_000 + rng.integers(0, 600_000, 200)
        x = _data(rng, 200, shift=0.5 if minute >= 60 else 0.0)
        dec = decision_codes(rng.choice(["allow", "review", "block"], 200).tolist())
        mon.update_batch(x, rng.random(200), ts, dec)
        batches.append((ts, x))
    # hours 0 and 1 are closed (watermark is past 02:05), hour 2 is open
    closed = [h for h, _ in mon.closed]
    assert closed == [t0 // HOUR, t0 // HOUR + 1]
    h0, h1 = (s for _, s in mon.closed)
    assert h0.psi[0] < 0.1 < 0.25 < h1.psi[0]
    assert sum(h0.decisions.values()) == pytest.approx(1.0)
    # a row of a closed hour is late: kept in the sliding window, not in the hour
    before = mon.rows
    mon.update_batch(_data(rng, 1), np.array([0.5]), np.array([t0 + 1]), np.array([0]))
    assert mon.late_rows == 1 and mon.rows == before + 1
    drained = mon.drain_hours()
    assert sum(h.n for h in drained) == 15 * 200  # the late row belongs to no hour
    total = sum(h.counts for h in drained)
    assert int(total[0].sum()) == 15 * 200
    assert mon.drain_hours() == []


def test_detectors_fire_on_a_score_shift_and_label_rate() -> None:
    rng = np.random.default_rng(3)
    ref = _reference(_data(rng, 2000), rng.beta(1, 30, 2000), ["a", "b", "c"])
    mon = DriftMonitor(ref, window=5000, min_rows=10)
    for b in range(10):
        s = rng.beta(1, 30 if b < 5 else 3, 1000)
        mon.update_batch(_data(rng, 1000), s, np.zeros(1000, dtype=np.int64),
                         np.zeros(1000, dtype=np.int64))  # fmt: skip
    assert mon.detections["score_adwin"] >= 1 and mon.detections["score_page_hinkley"] >= 1
    y = [False] * 3000 + [bool(v) for v in rng.random(3000) < 0.3]
    p = [0.01] * 6000
    mon.update_labels(y, p)
    assert mon.detections["label_rate_adwin"] >= 1
    assert mon.detections["online_error_adwin"] >= 1
    assert mon.label_fraud_rate == pytest.approx(np.mean(y[-5000:]))


def test_a_model_without_reference_monitors_nothing_but_decisions() -> None:
    ref = DriftReference.from_metadata(None, ["a"])
    assert ref.names == [] and math.isnan(ref.fraud_rate)
    mon = DriftMonitor(ref, window=10, min_rows=1)
    mon.update_batch(np.zeros((3, 0)), np.array([0.1, 0.2, 0.3]), np.zeros(3, dtype=np.int64),
                     decision_codes(["allow", "block", "block"]))  # fmt: skip
    st = mon.sliding()
    assert st.decisions["block"] == pytest.approx(2 / 3) and len(st.psi) == 0


def test_psi_bins_fold_into_decile_shares_for_reports() -> None:
    rng = np.random.default_rng(4)
    train = _data(rng, 5000)
    ref = _reference(train, rng.random(5000), ["a", "b", "c"])
    cur = _data(rng, 1000, shift=0.3)
    counts = ref.counts(ref.bin_batch(np.c_[cur, rng.random(1000)]))
    shares = ref.shares(counts)
    h = reference_histograms(train, ["a", "b", "c"])["a"]
    from models.reference import bin_counts

    expected = np.asarray(bin_counts(h, cur[:, 0]), dtype=float)
    assert shares[0]["current"] == pytest.approx((expected / expected.sum()).tolist())
    assert sum(shares[0]["reference"]) == pytest.approx(1.0)
