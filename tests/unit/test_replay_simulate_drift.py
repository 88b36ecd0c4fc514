"""``simulate --drift``: the world shifts inside the drift window and nowhere else."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from replay.simulate import DriftScenario, simulate

DAY = 86_400_000
ARGS = {"days": 6, "seed": 3, "n_customers": 800, "n_merchants": 200}


def _by_day(df: pd.DataFrame) -> pd.Series:
    return (df["ts"] - df["ts"].min() // DAY * DAY) // DAY


def test_drift_changes_only_its_window() -> None:
    plain = simulate(**ARGS)
    drifted = simulate(**ARGS, drift=DriftScenario(start_day=4, end_day=5))
    cut = plain["ts"].min() // DAY * DAY + 4 * DAY
    cols = [c for c in plain.columns if c != "event_id"]  # ids carry the run's tag
    before_a = plain.loc[plain["ts"] < cut, cols].reset_index(drop=True)
    before_b = drifted.loc[drifted["ts"] < cut, cols].reset_index(drop=True)
    pd.testing.assert_frame_equal(before_a, before_b)
    assert not set(plain["event_id"]) & set(drifted["event_id"])

    day_a, day_b = _by_day(plain), _by_day(drifted)
    grocery_a = plain[(day_a == 4) & (plain["mcc"] == "5411")]["amount"].median()
    grocery_b = drifted[(day_b == 4) & (drifted["mcc"] == "5411")]["amount"].median()
    assert grocery_b == pytest.approx(3 * grocery_a, rel=0.25)
    new_dev = drifted["device_id"].str.startswith("devnew_")
    assert new_dev[day_b == 4].mean() > 0.05 and not new_dev[day_b != 4].any()
    assert drifted[new_dev]["is_fraud"].sum() == 0  # customers' new devices, not fraudsters'
    assert drifted[day_b == 4]["is_fraud"].mean() > 2 * plain[day_a == 4]["is_fraud"].mean()
    # after the window: the same world again (a few later abuses of wave cards aside)
    after_a = plain[day_a == 5]
    after_b = drifted[day_b == 5]
    assert after_b["amount"].median() == pytest.approx(after_a["amount"].median(), rel=0.05)
    assert not after_b["device_id"].str.startswith("devnew_").any()


def test_a_partial_day_window_keeps_the_wave_inside_it() -> None:
    plain = simulate(**ARGS)
    drifted = simulate(**ARGS, drift=DriftScenario(start_day=4, end_day=4.3))
    t0 = plain["ts"].min() // DAY * DAY
    lo, hi = t0 + 4 * DAY, t0 + int(4.3 * DAY)
    extra = len(drifted) - len(plain)
    assert extra > 0
    inside = drifted[(drifted["ts"] >= lo) & (drifted["ts"] < hi)]
    assert len(inside) - len(plain[(plain["ts"] >= lo) & (plain["ts"] < hi)]) == extra
    # the wave's hours spread over the window (no pile at its end)
    frauds = inside[inside["is_fraud"]]
    assert (frauds["ts"] >= hi - 3_600_000).mean() < 0.3


def test_several_categories_and_bad_ones() -> None:
    df = simulate(**ARGS, drift=DriftScenario(start_day=4, mcc="5411,5812", amount_factor=2.0))
    with pytest.raises(ValueError, match="unknown merchant category '9999'"):
        simulate(**ARGS, drift=DriftScenario(start_day=4, mcc="5411,9999"))
    with pytest.raises(ValueError, match="outside the period"):
        simulate(**ARGS, drift=DriftScenario(start_day=7))
    assert np.isfinite(df["amount"]).all()


def test_cli_drift_option(tmp_path: Path) -> None:
    out = tmp_path / "d.parquet"
    run = subprocess.run(
        [sys.executable, "-m", "engine.cli", "simulate", "--days", "4", "--customers", "300",
         "--merchants", "80", "--out", str(out), "--drift", "--drift-start", "2"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    df = pd.read_parquet(out)
    assert df["device_id"].str.startswith("devnew_").any()
    bad = subprocess.run(
        [sys.executable, "-m", "engine.cli", "simulate", "--days", "4", "--out", str(out),
         "--drift", "--profile", "handbook"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "--drift needs --profile default" in bad.stderr
