"""In-process replay through the real pipeline and a real Redis-protocol server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
import redis
import typer
from typer.testing import CliRunner

from engine import cli_replay
from engine.build import build_service
from engine.settings import Settings
from replay.replay import ReplayOptions, ReplaySink, replay_inprocess, run_replay
from replay.simulate import simulate
from replay.sources import write_transactions

pytestmark = pytest.mark.integration

DAY = 86_400_000


@pytest.fixture
def settings(redis_client: redis.Redis, redis_url: str, tmp_path: Path) -> Settings:
    return Settings(redis_url=redis_url, data_dir=tmp_path / "data")


@pytest.fixture(scope="module")
def world() -> pd.DataFrame:
    return simulate(days=3, seed=5, n_customers=150, n_merchants=40)


def test_decisions_parquet_has_one_row_per_transaction(
    settings: Settings, world: pd.DataFrame, tmp_path: Path
) -> None:
    path = tmp_path / "tx.parquet"
    write_transactions(world, path)
    out = tmp_path / "out"
    result = run_replay(ReplayOptions(path, label_delay_ms=DAY, out=out, progress=False,
                                      batch_size=256), settings)  # fmt: skip
    assert result.complete and result.sent["transaction"] == len(world)
    assert result.valid["transaction"] == len(world) and sum(result.dead.values()) == 0
    n_labels = int((world["ts"] + DAY < world["ts"].max() + 1).sum())
    assert result.sent["label"] == len(world) and n_labels <= len(world)
    d = pd.read_parquet(out / "decisions.parquet")
    assert d["event_id"].tolist() == world["event_id"].tolist()
    assert list(d.columns[:10]) == ["event_id", "card_id", "ts", "amount", "score", "decision",
                                   "reasons", "rule_set", "model", "mode"]  # fmt: skip
    names = build_service(settings, live=False).pipeline.feature_names
    fixed = list(d.columns[:10])
    assert list(d.columns[10:]) == [f"feature_{n}" if n in fixed else n for n in names]
    assert d["score"].between(0, 1).all()
    assert set(d["decision"]) <= {"allow", "review", "block"}
    assert (d["ts"].to_numpy() == world["ts"].to_numpy()).all()
    assert sum(result.decisions.values()) == len(world)
    assert d["card_id_count_24h"].min() >= 1  # a transaction counts in its own window
    assert not (out / ".decisions-parts").exists()


def test_malformed_rows_become_dead_letters(settings: Settings, tmp_path: Path) -> None:
    base = {"card_id": "card_1", "merchant_id": "m1", "amount": 12.5}
    t0 = 1_767_225_600_000
    lines = [orjson.dumps({**base, "event_id": f"e{i}", "ts": t0 + i}) for i in range(5)]
    lines.insert(2, b"not json at all")
    no_card = {"event_id": "bad", "ts": t0 + 2, "merchant_id": "m", "amount": 1}
    lines.insert(4, orjson.dumps(no_card))
    lines.append(orjson.dumps({**base, "event_id": "neg", "ts": t0 + 9, "amount": -3}))
    path = tmp_path / "tx.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out"
    result = run_replay(ReplayOptions(path, out=out, progress=False), settings)
    assert result.valid["transaction"] == 5 and result.dead["transaction"] == 3
    assert result.dead_reasons == {"not_json": 1, "missing_field": 1, "refund_not_supported": 1}
    dead = [orjson.loads(x) for x in (out / "dead_letters.jsonl").read_bytes().splitlines()]
    assert sorted(x["reason"] for x in dead) == [
        "missing_field", "not_json", "refund_not_supported"]  # fmt: skip
    # the quarantine names the rows of the file (0-based), not their values
    rejected = pd.read_parquet(out / "rejected.parquet")
    assert rejected[["row", "reason"]].values.tolist() == [
        [2, "not_json"], [4, "missing_field"], [7, "refund_not_supported"]]  # fmt: skip
    assert len(pd.read_parquet(out / "decisions.parquet")) == 5


def test_interrupted_replay_resumes_and_writes_every_decision_once(
    settings: Settings, world: pd.DataFrame, tmp_path: Path
) -> None:
    path = tmp_path / "tx.csv"
    write_transactions(world, path)
    out = tmp_path / "out"
    opts: dict[str, Any] = {"label_delay_ms": DAY // 2, "out": out, "progress": False,
                            "batch_size": 100, "part_rows": 250,
                            "max_defer_ms": 600_000}  # fmt: skip
    service = build_service(settings, sink=ReplaySink("dead-letter"), live=False)
    real = service.process_transactions
    calls = {"n": 0}

    def flaky(messages: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 12:
            raise KeyboardInterrupt
        return real(messages)

    service.process_transactions = flaky  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        replay_inprocess(ReplayOptions(path, **opts), settings, service=service)
    assert (out / "replay-checkpoint.json").exists()
    first = orjson.loads((out / "replay-checkpoint.json").read_bytes())
    assert 0 < first["position"]["transactions"] < len(world) and first["parts"] >= 1
    result = run_replay(ReplayOptions(path, resume=True, **opts), settings)
    assert result.resumed and result.complete
    d = pd.read_parquet(out / "decisions.parquet")
    assert d["event_id"].tolist() == world["event_id"].tolist()
    assert result.sent["transaction"] == len(world)
    again = run_replay(ReplayOptions(path, resume=True, **opts), settings)
    assert again.complete  # nothing left to do


def cross_day_copies(world: pd.DataFrame, n: int) -> tuple[pd.DataFrame, int]:
    """``world`` with copies of ``n`` of its first 150 rows, re-stamped 36 h later (another
    event-time day, the same event id), the file kept in time order."""
    copies = world.iloc[:150:150 // n].assign(ts=lambda f: f["ts"] + DAY * 3 // 2)
    both = pd.concat([world, copies], ignore_index=True)
    return both.sort_values("ts", kind="stable").reset_index(drop=True), len(copies)


@pytest.mark.parametrize("with_out", [True, False])
def test_a_resumed_replay_still_decides_a_re_stamped_copy_once(
    settings: Settings, world: pd.DataFrame, tmp_path: Path, with_out: bool
) -> None:
    """Copies whose original was decided before the checkpoint: the resumed run knows the ids
    (from its decision parts, or without ``--out`` from the file before the position)."""
    clean_path, path = tmp_path / "clean.parquet", tmp_path / "tx.parquet"
    write_transactions(world, clean_path)
    tx, n_copies = cross_day_copies(world, 30)
    write_transactions(tx, path)
    opts: dict[str, Any] = {"progress": False, "batch_size": 100, "part_rows": 250}
    clean = run_replay(ReplayOptions(clean_path, out=tmp_path / "clean", **opts), settings)
    assert clean.complete and sum(clean.dead.values()) == 0
    redis.Redis.from_url(settings.redis_url).flushdb()

    out = tmp_path / "out" if with_out else None
    service = build_service(settings, sink=ReplaySink("dead-letter"), live=False)
    real, calls = service.process_transactions, {"n": 0}

    def interrupted(messages: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 8:  # after 700 rows: every original (the first 150) is decided
            raise KeyboardInterrupt
        return real(messages)

    service.process_transactions = interrupted  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        replay_inprocess(ReplayOptions(path, out=out, checkpoint_seconds=0, **opts), settings,
                         service=service)  # fmt: skip
    result = run_replay(ReplayOptions(path, out=out, resume=True, checkpoint_seconds=0, **opts),
                        settings)  # fmt: skip
    assert result.resumed and result.complete
    assert result.sent["transaction"] == len(world) + n_copies
    assert result.valid["transaction"] == len(world)
    assert result.dead["transaction"] == n_copies
    assert result.dead_reasons == {"duplicate_event_id": n_copies}
    if out is None:
        return
    got = pd.read_parquet(out / "decisions.parquet")
    want = pd.read_parquet(tmp_path / "clean" / "decisions.parquet")
    assert got["event_id"].tolist() == want["event_id"].tolist()
    pd.testing.assert_frame_equal(got, want)
    rejected = pd.read_parquet(out / "rejected.parquet")
    copy_rows = np.flatnonzero(tx["event_id"].duplicated().to_numpy())
    assert rejected["row"].tolist() == copy_rows.tolist()
    assert set(rejected["reason"]) == {"duplicate_event_id"}


def test_cli_simulate_handbook_and_replay(settings: Settings, tmp_path: Path) -> None:
    app = typer.Typer()
    app.command(name="simulate")(cli_replay.simulate)
    app.command(name="replay")(cli_replay.replay)
    runner = CliRunner()
    path = tmp_path / "hb.parquet"
    res = runner.invoke(app, ["simulate", "--profile", "handbook", "--days", "4", "--customers",
                              "100", "--merchants", "200", "--out", str(path)])  # fmt: skip
    assert res.exit_code == 0, res.output
    hb = pd.read_parquet(path)
    assert hb["merchant_id"].str.startswith("T").all()
    env = {"RISKSTREAM_REDIS_URL": settings.redis_url, "RISKSTREAM_DATA_DIR": str(tmp_path)}
    res = runner.invoke(app, ["replay", "--transactions", str(path), "--to", "inprocess",
                              "--label-delay", "1d", "--out", str(tmp_path / "o"),
                              "--from", "2018-04-02", "--until", "2018-04-04",
                              "--no-progress"], env=env)  # fmt: skip
    assert res.exit_code == 0, res.output
    d = pd.read_parquet(tmp_path / "o" / "decisions.parquet")
    lo, hi = pd.Timestamp("2018-04-02", tz="UTC"), pd.Timestamp("2018-04-04", tz="UTC")
    in_window = hb[(hb["ts"] >= lo.value // 10**6) & (hb["ts"] < hi.value // 10**6)]
    assert d["event_id"].tolist() == in_window["event_id"].tolist()
    res = runner.invoke(app, ["replay", "--transactions", str(path), "--to", "nowhere"])
    assert res.exit_code != 0
    assert isinstance(res.exception, cli_replay.ReplayUsageError)


@pytest.mark.parametrize("with_out", [True, False])
def test_a_resumed_replay_decides_what_an_uninterrupted_one_does(
    settings: Settings, world: pd.DataFrame, tmp_path: Path, with_out: bool
) -> None:
    """Re-stamped copies 36 h later, five of whose originals (before the checkpoint) have no
    amount: the decoder dead-letters those five, so their copies are the first decided rows of
    their ids. A run interrupted after the originals and resumed must decide and dead-letter
    exactly what the same file does in one go (the resumed run used to rebuild its ids from the
    file before the checkpoint, invalid rows included, and dead-lettered those five copies)."""
    tx, n_copies = cross_day_copies(world, 30)
    copied = set(tx.loc[tx["event_id"].duplicated(), "event_id"])
    spoil = [i for i in range(150) if tx.at[i, "event_id"] in copied][:5]
    assert tx["event_id"].isin(tx.loc[spoil, "event_id"]).to_numpy()[300:].sum() == 5
    tx.loc[spoil, "amount"] = np.nan
    path = tmp_path / "tx.parquet"
    write_transactions(tx, path)
    opts: dict[str, Any] = {"progress": False, "batch_size": 100, "part_rows": 250,
                            "checkpoint_seconds": 0}  # fmt: skip
    ref = run_replay(ReplayOptions(path, out=tmp_path / "ref", **opts), settings)
    assert ref.dead_reasons == {"duplicate_event_id": n_copies - 5, "missing_field": 5}
    redis.Redis.from_url(settings.redis_url).flushdb()

    out = tmp_path / "out" if with_out else None
    service = build_service(settings, sink=ReplaySink("dead-letter"), live=False)
    real, calls = service.process_transactions, {"n": 0}

    def interrupted(messages: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 4:  # after 300 rows: the originals (first 150) judged, no copy yet
            raise KeyboardInterrupt
        return real(messages)

    service.process_transactions = interrupted  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        replay_inprocess(ReplayOptions(path, out=out, **opts), settings, service=service)
    result = run_replay(ReplayOptions(path, out=out, resume=True, **opts), settings)
    assert result.resumed and result.complete
    for field in ("sent", "valid", "dead", "dead_reasons", "decisions"):
        assert getattr(result, field) == getattr(ref, field), field
    if out is not None:
        pd.testing.assert_frame_equal(pd.read_parquet(out / "decisions.parquet"),
                                      pd.read_parquet(tmp_path / "ref" / "decisions.parquet"))
