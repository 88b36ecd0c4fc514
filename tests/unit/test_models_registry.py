"""ModelRegistry: register/list/promote/load round trip, idempotency, unknown versions."""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from models.errors import ModelIntegrityError, ModelLoadError, RoleError, UnknownModelError
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
    assert sorted(leftovers) == sorted([v1, v2, "roles.json", ".roles.lock"])  # no temp files


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


# -- roles ---------------------------------------------------------------------------------------


def three(tmp_path: Path) -> tuple[ModelRegistry, str, str, str]:
    reg = ModelRegistry(tmp_path)
    a, b, c = (reg.register(make_scorer(r)) for r in (5, 6, 7))
    return reg, a, b, c


def test_roles_champion_shadows_retired(tmp_path: Path) -> None:
    reg, a, b, c = three(tmp_path)
    assert {reg.role(v) for v in (a, b, c)} == {"candidate"}
    reg.promote(a)
    reg.shadow(b)
    reg.shadow(c)
    assert reg.shadow_versions() == [b, c]
    listed = {m["version"]: m["role"] for m in reg.list()}
    assert listed == {a: "champion", b: "shadow", c: "shadow"}

    roles = reg.promote(b)  # the shadow wins: it stops being a shadow, the old champion retires
    assert (roles.champion, roles.shadows, roles.retired) == (b, (c,), (a,))
    assert reg.role(a) == "retired" and reg.champion_version() == b

    reg.retire(c)
    assert reg.shadow_versions() == [] and reg.role(c) == "retired"
    reg.shadow(a)  # a retired model can come back as a shadow (or be promoted: rollback)
    assert reg.roles().retired == (c,) and reg.shadow_versions() == [a]
    history = reg.roles().history
    assert [(h["action"], h["version"]) for h in history][-2:] == [("retire", c), ("shadow", a)]
    assert history[-1]["previous_role"] == "retired"


def test_role_changes_that_would_break_the_engine_are_refused(tmp_path: Path) -> None:
    reg, a, b, _ = three(tmp_path)
    reg.promote(a)
    with pytest.raises(RoleError, match="champion"):
        reg.retire(a)
    with pytest.raises(RoleError, match="champion"):
        reg.shadow(a)
    assert reg.champion_version() == a and reg.shadow_versions() == []
    with pytest.raises(UnknownModelError):
        reg.shadow("0123456789ab")
    reg.shadow(b)
    reg.shadow(b)  # idempotent: listed once
    assert reg.shadow_versions() == [b]


def test_legacy_champion_file_is_read_and_migrated(tmp_path: Path) -> None:
    reg, a, b, _ = three(tmp_path)
    (tmp_path / "champion").write_text(a + "\n")
    assert reg.champion_version() == a and reg.role(a) == "champion"
    reg.shadow(b)
    assert not (tmp_path / "champion").exists()
    assert reg.champion_version() == a and reg.shadow_versions() == [b]


def test_concurrent_role_changes_are_not_lost(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    versions = [reg.register(make_scorer(r)) for r in range(3, 11)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda v: ModelRegistry(tmp_path).shadow(v), versions))
    assert sorted(reg.shadow_versions()) == sorted(versions)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".") and "tmp" in p.name] == []


def test_corrupt_model_file_raises_a_clear_load_error(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    v = reg.register(make_scorer(5))
    (tmp_path / v / "model.txt").write_text("this is not a LightGBM model\n")
    with pytest.raises(ModelLoadError, match=rf"model file .*{v}.* does not hash to its version"):
        reg.load(v)
    reg.promote(v)
    with pytest.raises(ModelLoadError):
        reg.load_champion()
    (tmp_path / v / "model.txt").write_bytes(make_scorer(5).model_text.encode()[:200])  # truncated
    with pytest.raises(ModelLoadError):
        reg.load(v)


def test_missing_model_file_raises_unknown_model(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    v = reg.register(make_scorer(5))
    reg.promote(v)
    (tmp_path / v / "model.txt").unlink()
    with pytest.raises(UnknownModelError, match=v):
        reg.load_champion()
    assert reg.list() == []  # a model without its file is not listed


def test_model_file_disagreeing_with_metadata_features_is_refused(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    v = reg.register(make_scorer(5))
    meta_path = tmp_path / v / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["feature_names"] = ["a", "c", "b"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="metadata"):
        reg.load(v)
