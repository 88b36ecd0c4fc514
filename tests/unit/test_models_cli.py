"""riskstream models list | show | promote | shadow | retire (the typer sub-app, no servers)."""

from __future__ import annotations

import json
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from engine import cli_models
from models.lgbm import LightGBMScorer
from models.registry import ModelRegistry


def scorer(rounds: int) -> LightGBMScorer:
    x = np.random.default_rng(0).normal(size=(300, 2))
    params = {"objective": "binary", "verbosity": -1, "seed": 1, "deterministic": True}
    return LightGBMScorer(lgb.train(params, lgb.Dataset(x, x[:, 0] > 0, feature_name=["a", "b"]),
                                    rounds))  # fmt: skip


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelRegistry:
    monkeypatch.setenv("RISKSTREAM_DATA_DIR", str(tmp_path))
    return ModelRegistry(tmp_path / "models")


def test_role_commands(registry: ModelRegistry) -> None:
    a = registry.register(scorer(5), {"metrics": {"auc_roc": 0.91, "average_precision": 0.4}})
    b = registry.register(scorer(6))
    run = CliRunner().invoke
    assert run(cli_models.app, ["promote", a]).exit_code == 0
    res = run(cli_models.app, ["shadow", b])
    assert res.exit_code == 0 and f"champion: {a}" in res.output and f"shadows:  {b}" in res.output
    assert registry.shadow_versions() == [b]
    res = run(cli_models.app, ["list"])
    assert res.exit_code == 0 and "champion" in res.output and "shadow" in res.output
    assert "0.9100" in res.output
    listed = json.loads(run(cli_models.app, ["list", "--json"]).output)
    assert {m["version"]: m["role"] for m in listed} == {a: "champion", b: "shadow"}
    shown = json.loads(run(cli_models.app, ["show", b]).output)
    assert shown["role"] == "shadow" and shown["feature_names"] == ["a", "b"]
    assert run(cli_models.app, ["retire", b]).exit_code == 0
    assert registry.role(b) == "retired"


def test_errors_are_exceptions_the_main_cli_prints_as_one_line(registry: ModelRegistry) -> None:
    a = registry.register(scorer(5))
    registry.promote(a)
    res = CliRunner().invoke(cli_models.app, ["retire", a])
    assert res.exit_code != 0 and type(res.exception).__name__ == "RoleError"
    assert type(res.exception).__module__.startswith("models.")
    res = CliRunner().invoke(cli_models.app, ["show", "ffffffffffff"])
    assert type(res.exception).__name__ == "UnknownModelError"


def test_train_misuse(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(cli_models.train)
    app.command("noop")(lambda: None)
    f = tmp_path / "tx.csv"
    f.write_text("event_id\n")
    base = ["train", "--train-start", "2026-01-01", "--train-end", "2026-01-02"]
    res = CliRunner().invoke(app, [*base, "--transactions", str(f), "--labels", str(f),
                                   "--label-delay", "1d"])  # fmt: skip
    assert isinstance(res.exception, cli_models.ModelsCliError) and "either" in str(res.exception)
    res = CliRunner().invoke(app, [*base, "--transactions", str(tmp_path / "none.csv")])
    assert "no such file" in str(res.exception)
    res = CliRunner().invoke(app, [*base, "--transactions", str(f), "--label-delay", "soon"])
    assert "--label-delay" in str(res.exception)
