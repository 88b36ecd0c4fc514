"""The transaction simulator: shape, determinism and the three labelled fraud patterns."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from replay.simulate import CHANNELS, COLUMNS, FRAUD_PATTERNS, simulate
from replay.sources import write_transactions

DAY_MS = 86_400_000
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
# what the engine's validator rejects: 13-19 digits, optionally grouped by single spaces/dashes
PAN_LIKE = re.compile(r"(?<![0-9])[0-9](?:[ -]?[0-9]){12,18}(?![0-9])")
TEXT_COLUMNS = [c for c in COLUMNS if c not in ("ts", "amount", "is_fraud")]


def small(seed: int = 7, days: int = 14, n_customers: int = 1500) -> pd.DataFrame:
    return simulate(days=days, seed=seed, n_customers=n_customers, n_merchants=300)


@pytest.fixture(scope="module")
def df() -> pd.DataFrame:
    return small()


def test_columns_and_dtypes(df: pd.DataFrame) -> None:
    assert tuple(df.columns) == COLUMNS
    assert df["ts"].dtype == np.int64
    assert df["amount"].dtype == np.float64
    assert df["is_fraud"].dtype == bool
    for col in TEXT_COLUMNS:
        assert pd.api.types.is_string_dtype(df[col]), col
        assert df[col].map(type).eq(str).all(), col
    assert isinstance(df.index, pd.RangeIndex)
    assert df.index[0] == 0


def test_sorted_unique_and_in_period(df: pd.DataFrame) -> None:
    assert len(df) > 10_000
    assert df["ts"].is_monotonic_increasing
    assert df["event_id"].is_unique
    assert df["ts"].min() >= START_MS
    assert df["ts"].max() < START_MS + 14 * DAY_MS


def test_start_is_respected() -> None:
    out = simulate(days=2, seed=1, start="2026-03-01", n_customers=200, n_merchants=50)
    t0 = int(pd.Timestamp("2026-03-01", tz="UTC").value // 1_000_000)
    assert out["ts"].min() >= t0
    assert out["ts"].max() < t0 + 2 * DAY_MS


def test_field_values(df: pd.DataFrame) -> None:
    amount = df["amount"].to_numpy()
    assert np.isfinite(amount).all()
    assert (amount > 0).all()
    assert np.allclose(amount * 100, np.round(amount * 100), atol=1e-6)  # cents
    assert set(df["channel"]) <= set(CHANNELS)
    assert set(df["channel"]) == set(CHANNELS)
    assert df["mcc"].str.fullmatch(r"[0-9]{4}").all()
    assert df["country"].str.fullmatch(r"[A-Z]{2}").all()
    assert df["currency"].str.fullmatch(r"[A-Z]{3}").all()
    assert df["ip"].str.fullmatch(r"(?:[0-9]{1,3}\.){3}[0-9]{1,3}").all()
    for col in ("event_id", "card_id", "customer_id", "merchant_id", "device_id"):
        assert (df[col].str.len() > 0).all(), col
    assert df["card_id"].str.fullmatch(r"card_[0-9]+").all()
    assert set(df["fraud_pattern"]) == {"", *FRAUD_PATTERNS}
    assert (df["is_fraud"] == (df["fraud_pattern"] != "")).all()


def test_no_field_looks_like_a_card_number(df: pd.DataFrame) -> None:
    for col in [*TEXT_COLUMNS, "amount"]:
        text = df[col].astype(str)
        assert not text.str.contains(PAN_LIKE).any(), col
        assert not text.str.fullmatch(r"[0-9]{13,19}").any(), col


def test_mostly_home_country_and_usual_merchants(df: pd.DataFrame) -> None:
    legit = df[~df["is_fraud"]]
    home = legit.groupby("customer_id")["country"].agg(lambda s: s.mode().iloc[0])
    assert (legit["country"] == legit["customer_id"].map(home)).mean() > 0.8
    # a customer's 5 most frequent merchants carry a good share of the spending
    per = legit.groupby(["customer_id", "merchant_id"]).size()
    top = per.groupby(level=0).apply(lambda s: s.nlargest(5).sum() / s.sum())
    assert top.median() > 0.5


def test_day_night_cycle(df: pd.DataFrame) -> None:
    hour = (df.loc[~df["is_fraud"], "ts"] // 3_600_000) % 24
    counts = hour.value_counts()
    assert counts.loc[[1, 2, 3, 4]].sum() * 5 < counts.loc[[10, 11, 12, 13]].sum()


def test_fraud_rate_in_range() -> None:
    for seed in (0, 1, 2):
        rate = small(seed, days=10)["is_fraud"].mean()
        assert 0.005 <= rate <= 0.02, (seed, rate)


def test_each_pattern_present_and_labelled(df: pd.DataFrame) -> None:
    for pattern in FRAUD_PATTERNS:
        rows = df[df["fraud_pattern"] == pattern]
        assert len(rows) >= 3, pattern
        assert rows["is_fraud"].all(), pattern
    assert not df.loc[df["fraud_pattern"] == "", "is_fraud"].any()


def test_card_testing_bursts(df: pd.DataFrame) -> None:
    ct = df[df["fraud_pattern"] == "card_testing"]
    assert ct["amount"].between(0.5, 5.0).all()
    assert (ct["channel"] == "ecom").mean() > 0.6
    bursts = ct.groupby("card_id")["ts"].agg(["size", "min", "max"])
    assert (bursts["size"] >= 5).all()
    assert ((bursts["max"] - bursts["min"]) < 2 * 3_600_000).mean() > 0.9  # within minutes
    legit_devices = set(df.loc[~df["is_fraud"], "device_id"])
    online = ct[ct["channel"] == "ecom"]
    assert (~online["device_id"].isin(legit_devices)).mean() > 0.5


def test_account_takeover_high_amounts_new_device(df: pd.DataFrame) -> None:
    legit = df[~df["is_fraud"]]
    usual = legit.groupby("customer_id")["amount"].median()
    ato = df[df["fraud_pattern"] == "account_takeover"]
    ratio = ato["amount"] / ato["customer_id"].map(usual)
    assert ratio.median() > 4
    seen = legit.groupby("customer_id")["device_id"].agg(set)
    new = [
        d not in seen.get(c, set())
        for c, d in zip(ato["customer_id"], ato["device_id"], strict=True)
    ]
    assert all(new)
    per_card = ato.groupby("card_id")["ts"].agg(["size", "min", "max"])
    assert ((per_card["max"] - per_card["min"]) <= 4 * 3_600_000).mean() > 0.8


def test_compromised_merchants_surge(df: pd.DataFrame) -> None:
    cm = df[df["fraud_pattern"] == "compromised_merchant"]
    by_merchant = cm.groupby("merchant_id").agg(n=("card_id", "size"), cards=("card_id", "nunique"))
    top = by_merchant.nlargest(3, "n")
    assert (top["cards"] >= 0.8 * top["n"]).all()  # many different cards
    # a few merchants a week carry most of it
    assert top["n"].sum() > 0.3 * len(cm)


def test_deterministic_per_seed(tmp_path: Path) -> None:
    a, b = small(3, days=3), small(3, days=3)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    write_transactions(a, tmp_path / "a.parquet")
    write_transactions(b, tmp_path / "b.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def test_different_seeds_and_arguments_differ() -> None:
    a, b = small(3, days=3), small(4, days=3)
    assert len(a) != len(b) or not a.equals(b)
    assert not set(a["event_id"]) & set(b["event_id"])  # the run tag differs
    c = small(3, days=4)
    assert not set(a["event_id"]) & set(c["event_id"])


@pytest.mark.parametrize("n_merchants", [1, 2, 16, 20])
def test_tiny_worlds(n_merchants: int) -> None:
    out = simulate(days=1, seed=0, n_customers=3, n_merchants=n_merchants)
    assert out["ts"].is_monotonic_increasing
    assert out["event_id"].is_unique
    assert (out["amount"] > 0).all()
    assert set(out["fraud_pattern"]) >= set(FRAUD_PATTERNS)


@pytest.mark.parametrize(
    "kw",
    [{"days": 0}, {"n_customers": 0}, {"n_merchants": 0}, {"tx_per_customer_per_day": 0.0}],
)
def test_bad_arguments(kw: dict[str, float]) -> None:
    args: dict[str, float] = {"days": 1, "n_customers": 10, "n_merchants": 10} | kw
    with pytest.raises(ValueError, match=next(iter(kw))):
        simulate(seed=0, **args)  # type: ignore[arg-type]
