"""Path contributions: LightGBM's own decisions down every tree, summing to its raw margin."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.lgbm import LightGBMScorer
from models.paths import TreePaths, UnsupportedTreeError


def _data(seed: int, n: int = 600) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Four informative columns, one never informative, with NaNs and exact zeros."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5))
    y = (x[:, 0] + 0.5 * x[:, 1] - x[:, 2] * (x[:, 3] > 0) + 0.3 * rng.normal(size=n) > 0)
    x[rng.random(x.shape) < 0.1] = np.nan
    x[rng.random(x.shape) < 0.1] = 0.0
    return x, y.astype(np.int64)


def _train(seed: int, leaves: int, zero_as_missing: bool, use_missing: bool) -> lgb.Booster:
    x, y = _data(seed)
    params = {"objective": "binary", "verbosity": -1, "num_leaves": leaves, "seed": seed,
              "deterministic": True, "force_row_wise": True, "num_threads": 1,
              "zero_as_missing": zero_as_missing, "use_missing": use_missing,
              "min_data_in_leaf": 5}  # fmt: skip
    return lgb.train(params, lgb.Dataset(x, y), num_boost_round=15)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    leaves=st.integers(2, 40),
    zero_as_missing=st.booleans(),
    use_missing=st.booleans(),
)
def test_contributions_and_bias_add_up_to_lightgbms_raw_margin(
    seed: int, leaves: int, zero_as_missing: bool, use_missing: bool
) -> None:
    booster = _train(seed, leaves, zero_as_missing, use_missing)
    rows, _ = _data(seed + 1, 200)  # unseen rows, NaNs and zeros in every column
    contrib, bias = TreePaths.of(booster).contributions(rows)
    assert contrib.shape == (200, 5)
    raw = booster.predict(rows, raw_score=True)
    np.testing.assert_allclose(contrib.sum(axis=1) + bias, raw, rtol=0, atol=1e-9)


def test_only_features_on_the_path_are_credited() -> None:
    booster = _train(3, 15, False, True)
    used = {i for i, gain in enumerate(booster.feature_importance("split")) if gain > 0}
    rows, _ = _data(4, 100)
    contrib, _ = TreePaths.of(booster).contributions(rows)
    for j in range(5):
        assert (np.abs(contrib[:, j]).sum() > 0) == (j in used)


def _categorical_booster() -> lgb.Booster:
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.integers(0, 6, 500), rng.normal(size=500)]).astype(float)
    y = np.isin(x[:, 0], [1, 4]).astype(int)
    return lgb.train({"objective": "binary", "verbosity": -1, "min_data_per_group": 5,
                      "cat_smooth": 1}, lgb.Dataset(x, y, categorical_feature=[0]),
                     num_boost_round=5)  # fmt: skip


def test_a_categorical_split_is_refused_and_the_scorer_keeps_treeshap() -> None:
    booster = _categorical_booster()
    with pytest.raises(UnsupportedTreeError, match="'=='"):
        TreePaths.of(booster)
    scorer = LightGBMScorer(booster, explain="path")
    assert scorer.explain_method == "shap"
    assert len(scorer.explain_batch(np.array([[1.0, 0.0], [2.0, 1.0]]), top=2)) == 2


def test_path_scorer_explains_with_path_contributions() -> None:
    booster = _train(7, 31, False, True)
    names = booster.feature_name()
    shap = LightGBMScorer(booster)
    path = LightGBMScorer(booster, explain="path")
    assert (shap.explain_method, path.explain_method) == ("shap", "path")
    assert path.version == shap.version  # how it explains is not part of the model
    rows, _ = _data(8, 40)
    contrib, bias = TreePaths.of(booster).contributions(rows)
    everything = path.explain_batch(rows, top=5)
    for i, row in enumerate(everything):
        assert [n for n, _, _ in row] == [names[j] for j in np.argsort(-np.abs(contrib[i]),
                                                                     kind="stable")]  # fmt: skip
        assert sum(c for _, _, c in row) + bias == pytest.approx(path.raw_margin(rows)[i])
    assert path.score_batch(rows).tolist() == shap.score_batch(rows).tolist()


def test_an_unknown_explain_method_is_refused() -> None:
    with pytest.raises(ValueError, match="expected one of shap, path"):
        LightGBMScorer(_train(1, 4, False, True), explain="lime")


def test_bench_figures_of_both_methods() -> None:
    from replay.bench import explain_figures

    rows, _ = _data(11, 300)
    figures = explain_figures(LightGBMScorer(_train(5, 31, False, True)), rows, rows=50)
    assert set(figures) == {"explain_shap_us_per_row", "explain_path_us_per_row",
                            "explain_path_top1_agreement", "explain_path_top3_overlap"}  # fmt: skip
    assert figures["explain_shap_us_per_row"] > 0 and figures["explain_path_us_per_row"] > 0
    assert 0 <= figures["explain_path_top1_agreement"] <= 1
    assert 1 / 3 <= figures["explain_path_top3_overlap"] <= 1  # 5 features: 3 of them shared


def test_doctests() -> None:
    import doctest

    from models import paths

    result = doctest.testmod(paths)
    assert result.attempted > 0 and result.failed == 0
