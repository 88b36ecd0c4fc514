"""ModelRegistry: register/list/promote/load round trip, idempotency, unknown versions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from models.errors import ModelIntegrityError, UnknownModelError
from models.lgbm import LightGBMScorer
from models.registry import ModelRegistry

NAMES = ["a", "b", "c"]


def make_scorer(rounds: int) -> LightGBMScorer:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 3))
    y = (x[:, 0] + x[:, 1] > 1.0).astype(int)
    params = {
        "objective": "binary",
        "seed": 1,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": 2,
        "verbosity": -1,
    }
    return LightGBMScorer(lgb.train(params, lgb.Dataset(x, y, feature_name=NAMES), rounds))


def test_round_trip(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "models")
    assert reg.list() == [] and reg.champion_version() is None and reg.load_champion() is None

    s1, s2 = make_scorer(10), make_scorer(20)
    window = {"start": "2024-01-01T00:00:00+00:00", "end": "2024-03-01T00:00:00+00:00"}
    v1 = reg.register(
        s1,
        {
            "metrics": {"auc_roc": 0.93, "ap": np.float64(0.5), "x": math.nan},
            "training_window": window,
            "trained_by": "test",
        },
    )
    v2 = reg.register(s2, {"metrics": {"auc_roc": 0.95}})
    assert (v1, v2) == (s1.version, s2.version) and v1 != v2

    meta = json.loads((tmp_path / "models" / v1 / "metadata.json").read_text())
    assert meta["version"] == v1 and meta["feature_names"] == NAMES
    assert meta["training_window"] == window and meta["trained_by"] == "test"
    assert meta["metrics"] == {"auc_roc": 0.93, "ap": 0.5, "x": None}  # strict JSON
    assert meta["created_at"].endswith("+00:00")
    assert (tmp_path / "models" / v1 / "model.txt").read_text() == s1.model_text

    listed = reg.list()
    assert {m["version"] for m in listed} == {v1, v2}
    assert not any(m["champion"] for m in listed)

    reg.promote(v2)
    assert reg.champion_version() == v2
    champion = reg.load_champion()
    assert champion is not None and champion.version == v2
    x = np.random.default_rng(1).normal(size=(20, 3))
    np.testing.assert_array_equal(champion.score_batch(x), s2.score_batch(x))
    assert [m["version"] for m in reg.list() if m["champion"]] == [v2]

    reg.promote(v1)  # promotion is a pointer swap, and a fresh registry object sees it
    assert ModelRegistry(tmp_path / "models").champion_version() == v1
    assert reg.load(v2).version == v2
    leftovers = [p.name for p in (tmp_path / "models").iterdir()]
    assert sorted(leftovers) == sorted([v1, v2, "champion"])  # no temp files/dirs left behind


def test_register_is_idempotent(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    s = make_scorer(5)
    v = reg.register(s, {"note": "first"})
    assert reg.register(make_scorer(5), {"note": "second"}) == v
    assert len(reg.list()) == 1 and reg.metadata(v)["note"] == "first"


@pytest.mark.parametrize("bad", ["0123456789ab", "../../etc/pa", "", "champion"])
def test_unknown_version(tmp_path: Path, bad: str) -> None:
    reg = ModelRegistry(tmp_path)
    reg.register(make_scorer(5))
    for call in (reg.load, reg.promote, reg.metadata):
        with pytest.raises(UnknownModelError) as info:
            call(bad)
        assert isinstance(info.value, KeyError)
        assert "unknown model version" in str(info.value)
    assert reg.champion_version() is None


def test_tampered_model_is_detected(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    v = reg.register(make_scorer(5))
    other = make_scorer(6)
    (tmp_path / v / "model.txt").write_text(other.model_text)
    with pytest.raises(ModelIntegrityError):
        reg.load(v)
