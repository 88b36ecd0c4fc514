"""Deterministic LightGBM training with imbalance handling, early stopping and validation metrics.

Features must come from the same pipeline that serves (replayed history), and the validation set
should be a *later* time period than the training set; this module does not split for you.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np
import numpy.typing as npt

from models._checks import unique_names
from models.evaluation import binary_metrics, card_precision_at_k
from models.lgbm import LightGBMScorer

__all__ = ["DEFAULT_PARAMS", "TrainResult", "card_precision_at_k", "train_lightgbm"]

FloatArray = npt.NDArray[np.float64]

DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "metric": ["average_precision", "auc"],  # early stopping watches the first one
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_data_in_leaf": 20,
    "feature_fraction": 0.9,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    # Reproducibility: same data + params => byte-identical model => same content version.
    "seed": 42,
    "deterministic": True,
    "force_row_wise": True,
    "num_threads": 2,
    "verbosity": -1,
}

EARLY_STOPPING_ROUNDS = 50


@dataclass(frozen=True)
class TrainResult:
    """The trained scorer, its validation metrics and the effective LightGBM parameters."""

    scorer: LightGBMScorer
    metrics: dict[str, float]
    params: dict[str, Any] = field(default_factory=dict)


def _as_xy(
    x: FloatArray, y: Sequence[bool] | npt.NDArray[Any], n_features: int, what: str
) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """Validate shapes and binary labels early, with messages naming the offending set."""
    xa = np.asarray(x, dtype=np.float64)
    ya = np.asarray(y).astype(np.int64)
    if xa.ndim != 2 or xa.shape[1] != n_features:
        msg = f"{what}: X has shape {xa.shape}, expected (n, {n_features}) to match feature_names"
        raise ValueError(msg)
    if ya.shape != (xa.shape[0],):
        msg = f"{what}: y has shape {ya.shape}, expected ({xa.shape[0]},)"
        raise ValueError(msg)
    if not np.isin(ya, (0, 1)).all():
        msg = f"{what}: labels must be binary (0/1 or bool)"
        raise ValueError(msg)
    return xa, ya


def train_lightgbm(
    X_train: FloatArray,
    y_train: Sequence[bool] | npt.NDArray[Any],
    feature_names: Sequence[str],
    X_valid: FloatArray | None = None,
    y_valid: Sequence[bool] | npt.NDArray[Any] | None = None,
    params: Mapping[str, Any] | None = None,
    num_boost_round: int = 300,
    *,
    card_ids_valid: Sequence[Any] | npt.NDArray[Any] | None = None,
    k: int = 100,
) -> TrainResult:
    """Train a binary LightGBM model; metrics are computed on the validation set when given.

    Imbalance: unless ``params`` sets ``scale_pos_weight`` or ``is_unbalance``, positives are
    weighted by ``n_negative / n_positive``. That helps the trees find the rare class but inflates
    the probabilities (ranking metrics are unaffected); pass ``{"scale_pos_weight": 1.0}`` if
    calibrated probabilities matter more than recall of the rare class.

    Early stopping (50 rounds on average precision) is used only with a validation set; otherwise
    exactly ``num_boost_round`` trees are built. Without a validation set the metrics are on the
    training data and prefixed ``train_`` so they are never mistaken for validation metrics.
    """
    names = unique_names(feature_names)
    xt, yt = _as_xy(X_train, y_train, len(names), "train")
    n_pos = int(yt.sum())
    if n_pos == 0 or n_pos == len(yt):
        msg = "training labels must contain both classes"
        raise ValueError(msg)

    p: dict[str, Any] = {**DEFAULT_PARAMS, **(params or {})}
    if "scale_pos_weight" not in p and not p.get("is_unbalance"):
        p["scale_pos_weight"] = (len(yt) - n_pos) / n_pos

    train_set = lgb.Dataset(xt, label=yt, feature_name=names, free_raw_data=True)
    callbacks: list[Any] = []
    valid_sets: list[lgb.Dataset] = []
    xv: FloatArray | None = None
    yv: npt.NDArray[np.int64] | None = None
    if X_valid is not None:
        if y_valid is None:
            msg = "X_valid given without y_valid"
            raise ValueError(msg)
        xv, yv = _as_xy(X_valid, y_valid, len(names), "valid")
        valid_sets.append(lgb.Dataset(xv, label=yv, reference=train_set))
        if 0 < int(yv.sum()) < len(yv):
            callbacks.append(
                lgb.early_stopping(EARLY_STOPPING_ROUNDS, first_metric_only=True, verbose=False)
            )

    booster = lgb.train(
        p,
        train_set,
        num_boost_round=num_boost_round,
        valid_sets=valid_sets or None,
        valid_names=["valid"] if valid_sets else None,
        callbacks=callbacks,
    )
    scorer = LightGBMScorer(booster)

    if xv is not None and yv is not None:
        metrics = binary_metrics(scorer.score_batch(xv), yv, card_ids_valid, k)
    else:
        train_metrics = binary_metrics(scorer.score_batch(xt), yt)
        metrics = {f"train_{key}": value for key, value in train_metrics.items()}
    metrics["num_trees"] = float(scorer.num_trees)
    metrics["best_iteration"] = float(booster.best_iteration or scorer.num_trees)
    metrics["n_train"] = float(len(yt))
    metrics["train_positive_rate"] = n_pos / len(yt)
    return TrainResult(scorer=scorer, metrics=metrics, params=p)
