"""The handbook simulator: shape, determinism and the three fraud scenarios."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from replay.handbook import (
    COLUMNS,
    HANDBOOK_PATTERNS,
    scenario_counts,
    simulate_handbook,
    simulate_profile,
)

DAY_MS = 86_400_000


@pytest.fixture(scope="module")
def world() -> pd.DataFrame:
    return simulate_handbook(3, n_customers=800, n_terminals=1600, nb_days=60)


def test_columns_order_ids_and_amounts(world: pd.DataFrame) -> None:
    assert list(world.columns) == list(COLUMNS)
    assert world["ts"].is_monotonic_increasing
    assert world["event_id"].is_unique
    assert (world["amount"] > 0).all()
    assert (world["card_id"] == world["customer_id"]).all()
    assert world["card_id"].str.fullmatch(r"C\d{5}").all()
    assert world["merchant_id"].str.fullmatch(r"T\d{5}").all()
    start = pd.Timestamp("2018-04-01", tz="UTC").value // 1_000_000
    secs = (world["ts"].to_numpy() - start) % DAY_MS
    assert secs.min() > 0 and secs.max() < DAY_MS  # times kept strictly inside the day
    assert (secs % 1000 == 0).all()  # the handbook's second resolution
    assert (world["ts"].to_numpy() - start).max() < 60 * DAY_MS


def test_same_seed_same_world_other_seed_other_world() -> None:
    a = simulate_handbook(1, n_customers=100, n_terminals=200, nb_days=10)
    b = simulate_handbook(1, n_customers=100, n_terminals=200, nb_days=10)
    c = simulate_handbook(2, n_customers=100, n_terminals=200, nb_days=10)
    pd.testing.assert_frame_equal(a, b)
    assert len(a) != len(c) or not np.array_equal(a["amount"], c["amount"])


def test_fraud_scenarios(world: pd.DataFrame) -> None:
    counts = scenario_counts(world)
    assert set(counts) == set(HANDBOOK_PATTERNS)
    assert 0.005 < world["is_fraud"].mean() < 0.1  # small world: more terminals compromised
    assert ((world["fraud_pattern"] != "") == world["is_fraud"]).all()
    legit = world[~world["is_fraud"]]
    assert (legit["amount"] <= 220).all()  # scenario 1 takes every amount above 220
    s1 = world[world["fraud_pattern"] == "amount_over_220"]
    assert (s1["amount"] > 220).all()
    # scenario 2: a compromised terminal's frauds lie within 28-day windows of the days drawn
    s2 = world[world["fraud_pattern"] == "compromised_terminal"]
    day = s2["ts"] // DAY_MS
    span = day.groupby(s2["merchant_id"]).agg(lambda d: d.max() - d.min())
    assert span.max() < 28 * 3  # a terminal drawn on a few days at most, in practice
    # scenario 3: amounts x5 make card frauds much larger than the card's usual amounts
    s3 = world[world["fraud_pattern"] == "compromised_card"]
    usual = legit.groupby("card_id")["amount"].median()
    ratio = (s3["amount"] / s3["card_id"].map(usual)).dropna()
    assert ratio.median() > 3


def test_profiles() -> None:
    hb = simulate_profile("handbook", days=5, seed=0, n_customers=50, n_merchants=100)
    assert hb["event_id"].str.startswith("hb0_").all()
    assert pd.Timestamp(int(hb["ts"].min()), unit="ms") >= pd.Timestamp("2018-04-01")
    default = simulate_profile("default", days=2, seed=0, n_customers=50, n_merchants=20)
    assert default["event_id"].str.startswith("tx_").all()
    with pytest.raises(ValueError, match="unknown simulation profile"):
        simulate_profile("nope")
