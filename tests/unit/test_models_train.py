"""Training: determinism, imbalance handling, early stopping and validation metrics."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from models.evaluation import binary_metrics
from models.train import TrainResult, card_precision_at_k, train_lightgbm

NAMES = [f"f{i}" for i in range(8)]


def make_data(
    n: int = 4000, seed: int = 0
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_], npt.NDArray[np.str_]]:
    """Imbalanced (~5 % positive), nearly separable data driven by f0, f1 and f2*f3."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(NAMES)))
    logit = 3.0 * x[:, 0] - 2.0 * x[:, 1] + 1.5 * x[:, 2] * x[:, 3] - 6.0
    y = rng.random(n) < 1.0 / (1.0 + np.exp(-logit))
    cards = np.array([f"card{i % 700}" for i in range(n)])
    return x, y, cards


@pytest.fixture(scope="module")
def trained() -> TrainResult:
    x, y, cards = make_data()
    return train_lightgbm(
        x[:3000], y[:3000], NAMES, x[3000:], y[3000:], card_ids_valid=cards[3000:], k=50
    )


def test_reaches_high_auc_on_separable_data(trained: TrainResult) -> None:
    m = trained.metrics
    assert m["auc_roc"] > 0.9
    assert 0.0 < m["average_precision"] <= 1.0
    assert 0.0 <= m["card_precision_at_50"] <= 1.0
    assert m["n"] == 1000 and m["n_train"] == 3000
    assert 1 <= m["best_iteration"] <= 300
    assert m["num_trees"] == m["best_iteration"]  # early stopping keeps only the best trees


def test_imbalance_weight_defaults_to_neg_over_pos(trained: TrainResult) -> None:
    _, y, _ = make_data()
    pos = y[:3000].sum()
    assert trained.params["scale_pos_weight"] == pytest.approx((3000 - pos) / pos)
    assert trained.params["deterministic"] is True and trained.params["num_threads"] == 2


def test_user_imbalance_choice_is_respected() -> None:
    x, y, _ = make_data(1500)
    res = train_lightgbm(x, y, NAMES, params={"is_unbalance": True}, num_boost_round=20)
    assert "scale_pos_weight" not in res.params


def test_training_is_deterministic() -> None:
    x, y, _ = make_data(2000)
    a = train_lightgbm(x[:1500], y[:1500], NAMES, x[1500:], y[1500:], num_boost_round=60)
    b = train_lightgbm(x[:1500], y[:1500], NAMES, x[1500:], y[1500:], num_boost_round=60)
    assert a.scorer.version == b.scorer.version
    assert a.metrics == b.metrics


def test_without_validation_builds_all_rounds_and_prefixes_train_metrics() -> None:
    x, y, _ = make_data(1500)
    res = train_lightgbm(x, y, NAMES, num_boost_round=25)
    assert res.scorer.num_trees == 25
    assert "auc_roc" not in res.metrics and res.metrics["train_auc_roc"] > 0.9


def test_rejects_bad_inputs() -> None:
    x, y, _ = make_data(500)
    with pytest.raises(ValueError, match="feature_names"):
        train_lightgbm(x[:, :5], y, NAMES)
    with pytest.raises(ValueError, match="both classes"):
        train_lightgbm(x, np.zeros(len(x), dtype=bool), NAMES)
    with pytest.raises(ValueError, match="unique"):
        train_lightgbm(x, y, ["a"] * len(NAMES))


def test_card_precision_at_k_hand_made() -> None:
    cards = ["a", "a", "b", "c", "c", "d", "e"]
    scores = [0.10, 0.95, 0.90, 0.20, 0.85, 0.50, 0.05]
    labels = [True, False, False, False, True, True, False]
    # per-card max: a=.95 (fraud: yes, on another txn), b=.90 (no), c=.85 (yes), d=.50 (yes), e=.05
    assert card_precision_at_k(cards, scores, labels, k=1) == 1.0
    assert card_precision_at_k(cards, scores, labels, k=2) == 0.5
    assert card_precision_at_k(cards, scores, labels, k=3) == pytest.approx(2 / 3)
    assert card_precision_at_k(cards, scores, labels, k=4) == 0.75
    assert card_precision_at_k(cards, scores, labels, k=100) == pytest.approx(3 / 5)  # all cards


def test_card_precision_at_k_ties_are_deterministic_and_edges() -> None:
    # equal max scores: ties broken by card id, so "a" (no fraud) comes before "b" (fraud)
    assert card_precision_at_k(["b", "a"], [0.5, 0.5], [True, False], k=1) == 0.0
    assert np.isnan(card_precision_at_k([], [], [], k=5))
    with pytest.raises(ValueError, match="k must be positive"):
        card_precision_at_k(["a"], [0.1], [True], k=0)
    with pytest.raises(ValueError, match="length mismatch"):
        card_precision_at_k(["a", "b"], [0.1], [True], k=1)


def test_binary_metrics_single_class_is_nan_not_error() -> None:
    m = binary_metrics(np.array([0.1, 0.2]), [False, False], ["a", "b"], k=1)
    assert np.isnan(m["auc_roc"]) and np.isnan(m["average_precision"])
    assert m["card_precision_at_1"] == 0.0 and m["positive_rate"] == 0.0
