"""riskstream train: history replayed through the real pipeline on a real Redis, then registered."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from engine.settings import Settings
from features.spec import DEFAULT_SPEC, feature_names
from features.transaction import TRANSACTION_FEATURE_NAMES
from models.registry import ModelRegistry
from replay.simulate import simulate
from replay.sources import write_transactions
from replay.training import (
    SCRATCH_MARKER,
    TrainingConfig,
    TrainingError,
    claim_scratch,
    parse_time,
    scratch_url,
    train_from_history,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def quiet(_: str) -> None:
    return None


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hist") / "tx.parquet"
    write_transactions(simulate(days=9, seed=4, n_customers=1200, n_merchants=250), path)
    return path


def config(path: Path, **kw: object) -> TrainingConfig:
    return TrainingConfig(
        transactions=path, train_start=parse_time("2026-01-02"),
        train_end=parse_time("2026-01-06"), valid_end=parse_time("2026-01-08"),
        test_end=parse_time("2026-01-10"), progress=False, num_boost_round=200,
        **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def test_train_registers_a_model_with_complete_metadata(
    history: Path, redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    settings = Settings(redis_url=redis_url, data_dir=tmp_path / "data")
    report = train_from_history(settings, config(history, promote=True), redis_client, log=quiet)

    registry = ModelRegistry(settings.models_dir)
    assert registry.champion_version() == report.version and report.promoted
    meta = registry.metadata(report.version)
    names = [*feature_names(DEFAULT_SPEC), *TRANSACTION_FEATURE_NAMES]
    assert meta["feature_names"] == names
    assert meta["training_window"] == {"start": "2026-01-02T00:00:00+00:00",
                                       "end": "2026-01-06T00:00:00+00:00"}  # fmt: skip
    assert meta["validation_window"]["end"].startswith("2026-01-08")
    fp = meta["data_fingerprint"]
    assert len(fp["transactions"]["sha256"]) == 64 and fp["label_delay_ms"] == 86_400_000
    hist = meta["reference_histograms"]
    assert set(hist["features"]) == set(names) and sum(hist["score"]["counts"]) > 0
    assert hist["features"][names[0]]["n"] == report.n_rows["train"]
    for period in ("valid", "test"):
        for model in ("lightgbm", "river", "hst", "rules"):
            m = meta["evaluation"][period][model]
            assert {"auc_roc", "average_precision", "card_precision_at_100"} <= set(m)
    assert meta["evaluation"]["valid"]["lightgbm"]["average_precision"] == pytest.approx(
        meta["metrics"]["average_precision"]
    )
    assert meta["metrics"]["auc_roc"] > 0.7  # the features carry signal
    assert meta["replay"]["events"] >= sum(report.n_rows.values())
    # the scratch DB is flushed afterwards: nothing but the marker
    assert redis_client.keys("*") == [SCRATCH_MARKER.encode()]


def test_labels_file_and_bad_periods(history: Path, redis_client: redis.Redis,
                                     redis_url: str, tmp_path: Path) -> None:  # fmt: skip
    import pandas as pd

    tx = pd.read_parquet(history)
    labels = tx.loc[tx["is_fraud"], ["event_id", "ts", "is_fraud"]].copy()
    labels["ts"] += 3 * 86_400_000
    labels_path = tmp_path / "labels.jsonl"
    write_transactions(labels, labels_path)
    settings = Settings(redis_url=redis_url, data_dir=tmp_path / "data")
    report = train_from_history(settings, config(history, labels=labels_path), redis_client,
                                log=quiet)  # fmt: skip
    meta = ModelRegistry(settings.models_dir).metadata(report.version)
    assert meta["data_fingerprint"]["labels"]["rows"] == len(labels)
    assert meta["replay"]["labels"] > 0
    bad = config(history)
    bad.train_end = bad.train_start
    with pytest.raises(TrainingError, match="ordered"):
        train_from_history(settings, bad, redis_client, log=quiet)


def test_scratch_database_guard(redis_url: str, redis_client: redis.Redis) -> None:
    url = scratch_url(redis_url, 14)
    assert url.endswith("/14")
    scratch = redis.Redis.from_url(url)
    scratch.flushdb()
    scratch.set("someone-elses-key", b"1")
    with pytest.raises(TrainingError, match="not empty"):
        claim_scratch(scratch, redis_url, url)
    scratch.delete("someone-elses-key")
    claim_scratch(scratch, redis_url, url)
    claim_scratch(scratch, redis_url, url)  # our own marker: fine again
    with pytest.raises(TrainingError, match="live one"):
        claim_scratch(redis_client, redis_url, redis_url)
    scratch.flushdb()


def test_train_command(history: Path, redis_url: str, tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    import typer

    from engine import cli_models

    monkeypatch.setenv("RISKSTREAM_REDIS_URL", redis_url)
    monkeypatch.setenv("RISKSTREAM_DATA_DIR", str(tmp_path / "data"))
    app = typer.Typer()
    app.command()(cli_models.train)
    app.add_typer(cli_models.app, name="models")
    runner = CliRunner()
    res = runner.invoke(app, [
        "train", "--transactions", str(history), "--label-delay", "12h",
        "--train-start", "2026-01-02", "--train-end", "2026-01-06", "--valid-end", "2026-01-08",
        "--rounds", "100", "--no-progress", "--scratch-db", "13",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "lightgbm" in res.output and "promote with: riskstream models promote" in res.output
    version = ModelRegistry(tmp_path / "data" / "models").list()[0]["version"]
    res = runner.invoke(app, ["models", "list", "--json"])
    assert res.exit_code == 0
    assert [(m["version"], m["role"]) for m in json.loads(res.output)] == [(version, "candidate")]
