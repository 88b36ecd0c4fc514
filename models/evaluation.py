"""Offline/online evaluation metrics shared by training, shadows and River models.

Fraud is rare and investigated per card, so besides ROC AUC we report average precision (area
under the precision-recall curve, sensitive to the rare class) and card precision@k (of the k
cards an analyst team could look at, how many really had fraud).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.metrics import average_precision_score, roc_auc_score


def card_precision_at_k(
    card_ids: Sequence[Any] | npt.NDArray[Any],
    scores: Sequence[float] | npt.NDArray[np.float64],
    labels: Sequence[bool] | npt.NDArray[Any],
    k: int = 100,
) -> float:
    """Fraction of the top-``k`` cards (ranked by their highest score) that had at least one fraud.

    Each card counts once, with the max score over its transactions. Ties in score are broken by
    card id so the result is deterministic. If there are fewer than ``k`` cards, the fraction is
    over all cards. Returns ``nan`` when there are no rows.
    """
    if k <= 0:
        msg = f"k must be positive, got {k}"
        raise ValueError(msg)
    cards = np.asarray(card_ids)
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    if not (len(cards) == len(s) == len(y)):
        msg = f"length mismatch: {len(cards)} card ids, {len(s)} scores, {len(y)} labels"
        raise ValueError(msg)
    if len(cards) == 0:
        return float("nan")
    uniq, inverse = np.unique(cards, return_inverse=True)
    card_score = np.full(len(uniq), -np.inf)
    np.maximum.at(card_score, inverse, s)
    card_fraud = np.zeros(len(uniq), dtype=bool)
    np.logical_or.at(card_fraud, inverse, y)
    # np.unique sorted the ids, so a stable sort on -score breaks ties by card id.
    order = np.argsort(-card_score, kind="stable")[: min(k, len(uniq))]
    return float(card_fraud[order].mean())


def binary_metrics(
    scores: npt.NDArray[np.float64],
    labels: npt.NDArray[Any] | Sequence[bool],
    card_ids: Sequence[Any] | npt.NDArray[Any] | None = None,
    k: int = 100,
) -> dict[str, float]:
    """ROC AUC, average precision, positive rate (and card precision@k when cards are given).

    AUC and AP are ``nan`` when only one class is present (undefined, not an error).
    """
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    both = bool(y.any() and not y.all())
    out: dict[str, float] = {
        "auc_roc": float(roc_auc_score(y, s)) if both else float("nan"),
        "average_precision": float(average_precision_score(y, s)) if both else float("nan"),
        "n": float(len(y)),
        "positive_rate": float(y.mean()) if len(y) else float("nan"),
    }
    if card_ids is not None:
        out[f"card_precision_at_{k}"] = card_precision_at_k(card_ids, s, y, k)
    return out
