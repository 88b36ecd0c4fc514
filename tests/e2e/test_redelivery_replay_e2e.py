"""Redelivered transactions and labels through ``riskstream replay --to inprocess``, black-box.

A simulated 10-day file (labels one day after each transaction, so that the default spec's
merchant fraud rates, 7 days behind, see them) is replayed through the CLI on a real Valkey, once
as it is (the baseline) and once per way a copy can reach the engine: adjacent to its original,
a few rows later (same batch), several batches later, later in event time within the allowed
lateness, beyond it, several copies of one event, and labels delivered two or three times.
Every run must give

* exactly one decision per ``event_id`` in ``decisions.parquet`` (the copies are dead letters
  with reason ``duplicate_event_id``, one per copy);
* every feature of every event equal to the baseline's (rtol 1e-9), and the same decisions;

and the baseline's windowed features equal the offline reference (``features.reference``).
Replaying the file again into a store that counted it already (every event a redelivery, long
after: the report's original symptom) dead-letters every transaction and changes no state.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest
import redis
from typer.testing import CliRunner

from engine.cli import app
from features.reference import reference_features
from features.spec import DEFAULT_SPEC
from replay.simulate import simulate
from replay.sources import write_transactions
from tests.unit.test_features_kernels import assert_features_equal

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

DAY = 86_400_000
HOUR = 3_600_000
BATCH = 100
FEATURES = [f.name for f in DEFAULT_SPEC]
LABEL_FEATURES = [f.name for f in DEFAULT_SPEC if f.agg in ("fraud_count", "fraud_rate")]
FIELDS = ("card_id", "customer_id", "merchant_id", "device_id", "ip", "channel")


@pytest.fixture(scope="module")
def world() -> pd.DataFrame:
    return simulate(days=10, seed=5, n_customers=150, n_merchants=30)


def labels_of(world: pd.DataFrame) -> pd.DataFrame:
    """A label for every transaction, known one day after it (sorted by label time)."""
    return pd.DataFrame(
        {"event_id": world["event_id"], "ts": world["ts"] + DAY, "is_fraud": world["is_fraud"]}
    )


def with_copies(frame: pd.DataFrame, where: Callable[[np.ndarray, int], int], rate: float,
                seed: int, times: int = 1,
                retime: bool = False) -> tuple[pd.DataFrame, int]:  # fmt: skip
    """``frame`` with copies of a random ``rate`` of its rows, each inserted after the row
    position ``where(ts, i)`` gives for original ``i``; returns the frame and the copies.
    ``retime``: a copy takes the time of the row it follows (a re-stamped row, same event id)."""
    rng = np.random.default_rng(seed)
    ts = frame["ts"].to_numpy()
    n = len(frame)
    picked = np.flatnonzero(rng.random(n) < rate)
    after: list[tuple[int, int, int]] = []  # (insert after row, tie-break, original row)
    for k, i in enumerate(picked.tolist()):
        for c in range(times):
            after.append((min(max(where(ts, i) + c, i), n - 1), k * times + c, i))
    order: list[int] = []
    stamp: list[int] = []  # the time each row of the result gets
    extra = sorted(after)
    e = 0
    for r in range(n):
        order.append(r)
        stamp.append(int(ts[r]))
        while e < len(extra) and extra[e][0] == r:
            order.append(extra[e][2])
            stamp.append(int(ts[r]) if retime else int(ts[extra[e][2]]))
            e += 1
    out = frame.iloc[order].reset_index(drop=True)
    if retime:
        out["ts"] = np.asarray(stamp, dtype=out["ts"].dtype)
    return out, len(after)


def rows_later(k: int) -> Callable[[np.ndarray, int], int]:
    return lambda ts, i: i + k


def time_later(ms: int) -> Callable[[np.ndarray, int], int]:
    """After the last row with a time up to ``ms`` later than the original's."""
    return lambda ts, i: int(np.searchsorted(ts, ts[i] + ms, side="right")) - 1


def replay(tmp: Path, name: str, redis_url: str, tx: pd.DataFrame, labels: pd.DataFrame,
           flush: bool = True) -> tuple[pd.DataFrame, list[dict[str, object]]]:  # fmt: skip
    """``riskstream replay --to inprocess`` on a file pair; the decision log and dead letters."""
    if flush:
        redis.Redis.from_url(redis_url).flushdb()
    tx_path, lb_path, out = tmp / f"{name}.parquet", tmp / f"{name}-labels.parquet", tmp / name
    write_transactions(tx, tx_path)
    labels.to_parquet(lb_path)
    env = {"RISKSTREAM_REDIS_URL": redis_url, "RISKSTREAM_DATA_DIR": str(tmp / "data")}
    res = CliRunner().invoke(
        app,
        ["replay", "--transactions", str(tx_path), "--labels", str(lb_path), "--to", "inprocess",
         "--out", str(out), "--batch-size", str(BATCH), "--no-progress"],
        env=env,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    dead_path = out / "dead_letters.jsonl"
    dead = (
        [orjson.loads(x) for x in dead_path.read_bytes().splitlines()] if dead_path.exists() else []
    )
    return pd.read_parquet(out / "decisions.parquet"), dead


@pytest.fixture(scope="module")
def baseline(
    world: pd.DataFrame, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> pd.DataFrame:
    tmp = tmp_path_factory.mktemp("baseline")
    decisions, dead = replay(tmp, "base", redis_url, world, labels_of(world))
    assert not dead
    assert decisions["event_id"].tolist() == world["event_id"].tolist()
    # the label features are exercised, not trivially zero
    assert (decisions[LABEL_FEATURES].fillna(0) > 0).any().any()
    return decisions.set_index("event_id")


def test_baseline_equals_the_offline_reference(world: pd.DataFrame, baseline: pd.DataFrame) -> None:
    ents = {f: world[f].astype(str).tolist() for f in FIELDS}
    want = reference_features(
        world["event_id"].tolist(), world["ts"].to_numpy(), world["amount"].to_numpy(), ents
    )
    windowed = [i for i, n in enumerate(FEATURES) if n not in LABEL_FEATURES]
    got = baseline.loc[world["event_id"], FEATURES].to_numpy()
    assert_features_equal(got[:, windowed], want[:, windowed], [FEATURES[i] for i in windowed])


SCENARIOS = {
    "adjacent": (rows_later(0), 0.2, 1),
    "same_batch": (rows_later(7), 0.2, 1),
    "across_batches": (rows_later(3 * BATCH + 11), 0.2, 1),
    "within_lateness": (time_later(50 * 60_000), 0.2, 1),
    "beyond_lateness": (time_later(30 * HOUR), 0.1, 1),
    "several_times": (rows_later(150), 0.05, 3),
}
#: a copy re-stamped a day and more later: another event-time day than its original's, where
#: the store's per-day ``seen`` sets do not look (found replaying a hand-edited file)
RETIMED = {"another_day": (time_later(30 * HOUR), 0.1, 1)}


@pytest.mark.parametrize("scenario", [*SCENARIOS, *RETIMED])
def test_copies_change_nothing(
    scenario: str,
    world: pd.DataFrame,
    baseline: pd.DataFrame,
    redis_url: str,
    tmp_path: Path,
) -> None:
    where, rate, times = {**SCENARIOS, **RETIMED}[scenario]
    tx, copies = with_copies(world, where, rate, seed=len(scenario), times=times,
                             retime=scenario in RETIMED)  # fmt: skip
    assert copies > 50
    if scenario in RETIMED:  # most copies really are on another day than their original
        first = tx.drop_duplicates("event_id").set_index("event_id")["ts"]
        copy = tx[tx["event_id"].duplicated()]
        assert (copy["ts"] // DAY != first.loc[copy["event_id"]].to_numpy() // DAY).sum() > 50
    decisions, dead = replay(tmp_path, scenario, redis_url, tx, labels_of(world))
    assert_same_as_baseline(decisions, baseline)
    tx_dead = [d for d in dead if d["topic"] == "transactions"]
    assert len(tx_dead) == copies
    assert {d["reason"] for d in dead} == {"duplicate_event_id"}


def test_duplicated_labels_change_nothing(
    world: pd.DataFrame, baseline: pd.DataFrame, redis_url: str, tmp_path: Path
) -> None:
    labels = labels_of(world)
    twice, n2 = with_copies(labels, rows_later(0), 0.3, seed=1)
    thrice, n3 = with_copies(twice, time_later(2 * HOUR), 0.1, seed=2, times=2)
    assert n2 + n3 > 100
    decisions, dead = replay(tmp_path, "labels", redis_url, world, thrice)
    assert_same_as_baseline(decisions, baseline)
    assert {d["topic"] for d in dead} <= {"labels"}
    assert {d["reason"] for d in dead} <= {"duplicate_event_id"}


def test_replaying_into_a_store_that_counted_the_file_changes_nothing(
    world: pd.DataFrame, baseline: pd.DataFrame, redis_url: str, tmp_path: Path
) -> None:
    """The report's symptom: the second replay recomputed every event from a compacted state
    and decided some twice. Now it dead-letters every transaction; the state is untouched (a
    third replay of a copy-free file after a flush still equals the baseline)."""
    labels = labels_of(world)
    first, _ = replay(tmp_path, "once", redis_url, world, labels)
    assert_same_as_baseline(first, baseline)
    again, dead = replay(tmp_path, "twice", redis_url, world, labels, flush=False)
    assert len(again) == 0
    tx_dead = [d for d in dead if d["topic"] == "transactions"]
    assert len(tx_dead) == len(world)
    assert {d["reason"] for d in tx_dead} == {"duplicate_event_id"}
    # the state still counts each event once: one new event per card, a minute after the file
    last = world.groupby("card_id").tail(1)
    probe = last.assign(
        event_id="probe_" + last["event_id"], ts=int(world["ts"].max()) + 60_000
    ).reset_index(drop=True)
    seen, dead = replay(tmp_path, "probe", redis_url, probe, labels.iloc[:0], flush=False)
    assert not dead and len(seen) == len(probe)
    both = pd.concat([world, probe], ignore_index=True)
    ents = {f: both[f].astype(str).tolist() for f in FIELDS}
    want = reference_features(
        both["event_id"].tolist(), both["ts"].to_numpy(), both["amount"].to_numpy(), ents
    )[len(world) :]
    windowed = [i for i, n in enumerate(FEATURES) if n not in LABEL_FEATURES]
    got = seen.set_index("event_id").loc[probe["event_id"], FEATURES].to_numpy()
    assert_features_equal(got[:, windowed], want[:, windowed], [FEATURES[i] for i in windowed])


def assert_same_as_baseline(decisions: pd.DataFrame, baseline: pd.DataFrame) -> None:
    ids = decisions["event_id"]
    assert not ids.duplicated().any(), ids[ids.duplicated()].head().tolist()
    assert set(ids) == set(baseline.index)
    got = decisions.set_index("event_id").loc[baseline.index]
    assert_features_equal(got[FEATURES].to_numpy(), baseline[FEATURES].to_numpy(), FEATURES)
    pd.testing.assert_series_equal(got["decision"], baseline["decision"])
    np.testing.assert_allclose(got["score"], baseline["score"], rtol=1e-9)
    assert got["reasons"].map(list).tolist() == baseline["reasons"].map(list).tolist()
