"""``RISKSTREAM_EXPLAIN_METHOD`` through the CLI, black-box: train, promote, replay twice.

The same file replayed with TreeSHAP and with path contributions must give the same decisions
and scores (how a row is explained is not how it is decided), and each run's model reasons on
every review/block row must be the top contributions of its own method, recomputed from the
feature row in the decision log (so the setting reached the scorer, and the path walk agrees
with the model through the whole product path).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis
from typer.testing import CliRunner

from engine.cli import app
from models.paths import TreePaths
from models.registry import ModelRegistry
from replay.simulate import simulate
from replay.sources import write_transactions

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def test_path_contributions_change_the_reasons_not_the_decisions(
    redis_url: str, tmp_path: Path
) -> None:
    world = simulate(days=8, seed=21, n_customers=300, n_merchants=50)
    history, live = tmp_path / "history.parquet", tmp_path / "live.parquet"
    cut = pd.Timestamp("2026-01-07", tz="UTC").value // 1_000_000
    write_transactions(world[world["ts"] < cut], history)
    write_transactions(world[world["ts"] >= cut].drop(columns=["is_fraud"]), live)
    data = tmp_path / "data"
    env = {"RISKSTREAM_REDIS_URL": redis_url, "RISKSTREAM_DATA_DIR": str(data)}
    runner = CliRunner()
    res = runner.invoke(app, [
        "train", "--transactions", str(history), "--label-delay", "12h",
        "--train-start", "2026-01-01", "--train-end", "2026-01-05", "--valid-end", "2026-01-07",
        "--rounds", "60", "--no-progress", "--scratch-db", "12",
    ], env=env)  # fmt: skip
    assert res.exit_code == 0, res.output
    version = ModelRegistry(data / "models").list()[0]["version"]
    assert runner.invoke(app, ["models", "promote", version], env=env).exit_code == 0

    out: dict[str, pd.DataFrame] = {}
    for method in ("shap", "path"):
        redis.Redis.from_url(redis_url).flushdb()
        res = runner.invoke(app, [
            "replay", "--transactions", str(live), "--to", "inprocess",
            "--out", str(tmp_path / method), "--no-progress",
        ], env={**env, "RISKSTREAM_EXPLAIN_METHOD": method,
                "RISKSTREAM_REVIEW_THRESHOLD": "0.02"})  # fmt: skip
        assert res.exit_code == 0, res.output
        out[method] = pd.read_parquet(tmp_path / method / "decisions.parquet")
    shap, path = (out[m].sort_values("event_id").reset_index(drop=True) for m in ("shap", "path"))
    assert len(shap) == len(path) > 0
    for col in ("event_id", "score", "decision"):
        assert shap[col].tolist() == path[col].tolist(), col
    flagged = (shap["decision"] != "allow").to_numpy()
    assert flagged.sum() >= 10
    # each run's model reasons are the top three contributions that raise the score, by its
    # method, recomputed here from the feature row the decision log holds
    scorer = ModelRegistry(data / "models").load(version)
    x = shap.loc[flagged, scorer.feature_names].to_numpy(dtype=np.float64)
    expected = {
        "shap": np.asarray(scorer._booster.predict(x, pred_contrib=True))[:, :-1],
        "path": TreePaths.of(scorer._booster).contributions(x)[0],
    }
    for method, frame in (("shap", shap), ("path", path)):
        got = [[r for r in rs if r.startswith("model:")] for rs in frame.loc[flagged, "reasons"]]
        c = expected[method]
        top = np.argsort(-np.abs(c), axis=1, kind="stable")[:, :3]
        want = [[f"model:{scorer.feature_names[j]}" for j in row if c[i, j] > 0]
                for i, row in enumerate(top.tolist())]  # fmt: skip
        assert got == want, method
    assert [list(r) for r in shap["reasons"]] != [list(r) for r in path["reasons"]]
