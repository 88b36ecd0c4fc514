"""LightGBMScorer: scoring shape/range, explanations, content versioning, feature checks."""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import numpy as np
import numpy.typing as npt
import pytest

from models.errors import FeatureMismatchError
from models.lgbm import LightGBMScorer

NAMES = ["amount", "card_count_1h", "merchant_fraud_rate", "km_from_home", "device_age_days"]


def make_data(
    n: int = 2000, seed: int = 1
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(NAMES)))
    y = (2.0 * x[:, 0] + x[:, 1] - x[:, 4] + 0.3 * rng.normal(size=n) > 2.0).astype(np.int64)
    return x, y


def train(rounds: int = 40, seed: int = 3) -> LightGBMScorer:
    x, y = make_data()
    params = {
        "objective": "binary",
        "seed": seed,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": 2,
        "verbosity": -1,
    }
    booster = lgb.train(params, lgb.Dataset(x, y, feature_name=NAMES), num_boost_round=rounds)
    return LightGBMScorer(booster)


@pytest.fixture(scope="module")
def scorer() -> LightGBMScorer:
    return train()


def test_properties(scorer: LightGBMScorer) -> None:
    assert scorer.feature_names == NAMES
    assert len(scorer.version) == 12 and int(scorer.version, 16) >= 0
    assert scorer.num_trees == 40


def test_score_batch_shape_and_range(scorer: LightGBMScorer) -> None:
    x, y = make_data(300, seed=9)
    s = scorer.score_batch(x)
    assert s.shape == (300,) and s.dtype == np.float64
    assert ((s >= 0.0) & (s <= 1.0)).all()
    assert s[y == 1].mean() > s[y == 0].mean()
    assert scorer.score_batch(np.empty((0, len(NAMES)))).shape == (0,)


def test_missing_values_are_scored(scorer: LightGBMScorer) -> None:
    x, _ = make_data(5)
    x[0, 2] = np.nan
    assert np.isfinite(scorer.score_batch(x)).all()


@pytest.mark.parametrize("shape", [(4, len(NAMES) - 1), (4, len(NAMES) + 1), (len(NAMES),)])
def test_feature_mismatch_raises(scorer: LightGBMScorer, shape: tuple[int, ...]) -> None:
    with pytest.raises(FeatureMismatchError, match=f"expects {len(NAMES)} feature columns"):
        scorer.score_batch(np.zeros(shape))
    with pytest.raises(FeatureMismatchError):
        scorer.explain_batch(np.zeros(shape))


def test_explain_batch_top3_names_and_contributions_sum_to_margin(scorer: LightGBMScorer) -> None:
    x, _ = make_data(50, seed=5)
    explained = scorer.explain_batch(x, top=3)
    assert len(explained) == 50
    full = scorer.explain_batch(x, top=len(NAMES) + 10)  # all features, capped at n_features
    bias = np.asarray(scorer._booster.predict(x, pred_contrib=True))[:, -1]
    margin = scorer.raw_margin(x)
    for i, (top3, everything) in enumerate(zip(explained, full, strict=True)):
        assert len(top3) == 3 and len(everything) == len(NAMES)
        assert top3 == everything[:3]
        for name, value, contribution in top3:
            assert name in NAMES
            assert value == x[i, NAMES.index(name)]
            assert isinstance(contribution, float)
        mags = [abs(c) for _, _, c in everything]
        assert mags == sorted(mags, reverse=True)
        assert sum(c for _, _, c in everything) + bias[i] == pytest.approx(margin[i], abs=1e-9)
    # the raw margin is the logit of the probability
    assert np.allclose(1.0 / (1.0 + np.exp(-margin)), scorer.score_batch(x))


def test_explain_edge_cases(scorer: LightGBMScorer) -> None:
    assert scorer.explain_batch(np.empty((0, len(NAMES)))) == []
    assert scorer.explain_batch(np.zeros((2, len(NAMES))), top=0) == [[], []]


def test_version_stable_across_save_load(scorer: LightGBMScorer, tmp_path: Path) -> None:
    path = tmp_path / "m" / "model.txt"
    scorer.save(path)
    loaded = LightGBMScorer.from_file(path)
    assert loaded.version == scorer.version
    assert loaded.feature_names == scorer.feature_names
    x, _ = make_data(100, seed=7)
    np.testing.assert_array_equal(loaded.score_batch(x), scorer.score_batch(x))
    # a booster saved natively by LightGBM gets the same version too
    scorer._booster.save_model(str(tmp_path / "native.txt"))
    assert LightGBMScorer.from_file(tmp_path / "native.txt").version == scorer.version
    assert list(tmp_path.joinpath("m").iterdir()) == [path]  # no temp files left behind


def test_version_changes_with_content(scorer: LightGBMScorer) -> None:
    assert train(rounds=40).version == scorer.version  # same content, same version
    assert train(rounds=41).version != scorer.version
    assert train(seed=4).version != scorer.version


def test_booster_with_best_iteration_keeps_only_best_trees() -> None:
    """lgb.train already truncates after early stopping; other boosters may still carry extra
    trees past ``best_iteration`` (which ``predict`` would silently ignore): we keep the same."""
    x, y = make_data()
    params = {"objective": "binary", "seed": 1, "num_threads": 2, "verbosity": -1}
    booster = lgb.train(params, lgb.Dataset(x, y, feature_name=NAMES), 30)
    booster.best_iteration = 12
    scorer = LightGBMScorer(booster)
    assert scorer.num_trees == 12
    np.testing.assert_allclose(scorer.score_batch(x[:100]), booster.predict(x[:100]))


def test_explanations_do_not_depend_on_explain_threads(scorer: LightGBMScorer) -> None:
    x, _ = make_data(64, seed=9)
    one = LightGBMScorer.from_string(scorer.model_text, num_threads=1, explain_threads=1)
    two = LightGBMScorer.from_string(scorer.model_text, num_threads=1, explain_threads=2)
    assert two.explain_batch(x, top=len(NAMES)) == one.explain_batch(x, top=len(NAMES))
    assert two.version == one.version == scorer.version
