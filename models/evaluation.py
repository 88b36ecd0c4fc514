"""Offline/online evaluation metrics shared by training, shadows and River models.

Fraud is rare and investigated per card, so besides ROC AUC we report average precision (area
under the precision-recall curve, sensitive to the rare class) and card precision@k (of the k
cards an analyst team could look at, how many really had fraud).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.metrics import average_precision_score, roc_auc_score

from models._atomic import atomic_write_text


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


def average_precision(scores: npt.NDArray[np.float64], labels: npt.NDArray[np.bool_]) -> float:
    """Average precision exactly as scikit-learn computes it (ties grouped), in O(n log n) numpy.

    ``nan`` when there is no positive (undefined). Used on every label batch, where sklearn's
    input validation would cost more than the computation.
    """
    y = np.asarray(labels, dtype=bool)
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    # last index of each run of equal scores = one threshold
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), len(s_sorted) - 1]
    tp = np.cumsum(y_sorted)[last]
    predicted = last + 1
    precision = tp / predicted
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


@dataclass
class _Window:
    scores: deque[float]
    labels: deque[bool]
    flagged: deque[bool]
    total: int = 0


class RollingEvaluator:
    """Rolling quality of each model version over its last ``window`` labelled transactions.

    Feed it, as labels arrive, the score each version gave the transaction *when it was scored*
    (for online models that is not the score they would give now) and whether that version's
    decision was review/block (``flagged``; for a shadow or an online model, "would have been":
    by default ``score >= review_threshold``)::

        ev = RollingEvaluator(window=5000, review_threshold=0.5)
        ev.update("a1b2c3d4e5f6", scores, labels, flagged=decisions != "allow")
        ev.average_precision("a1b2c3d4e5f6")   # nan until a fraud is in the window
        ev.review_precision("a1b2c3d4e5f6")    # share of flagged labelled txns that were fraud

    Metrics are computed on demand (AP over 5,000 rows costs ~0.3 ms). Labels in fraud are
    biased (every fraud gets a chargeback, only some legitimate transactions get a verdict), so
    these are comparisons between versions on the same labels, not population figures.
    """

    def __init__(self, window: int = 5000, review_threshold: float = 0.5) -> None:
        if window < 1:
            msg = f"window must be >= 1, got {window}"
            raise ValueError(msg)
        self.window = window
        self.review_threshold = review_threshold
        self._w: dict[str, _Window] = {}

    def _of(self, version: str) -> _Window:
        w = self._w.get(version)
        if w is None:
            n = self.window
            w = _Window(deque(maxlen=n), deque(maxlen=n), deque(maxlen=n))
            self._w[version] = w
        return w

    def update(
        self,
        version: str,
        scores: Sequence[float] | npt.NDArray[np.float64],
        labels: Sequence[bool] | npt.NDArray[Any],
        flagged: Sequence[bool] | npt.NDArray[Any] | None = None,
    ) -> None:
        s = np.asarray(scores, dtype=np.float64)
        y = np.asarray(labels).astype(bool)
        f = s >= self.review_threshold if flagged is None else np.asarray(flagged).astype(bool)
        if not (len(s) == len(y) == len(f)):
            msg = f"length mismatch: {len(s)} scores, {len(y)} labels, {len(f)} flags"
            raise ValueError(msg)
        w = self._of(version)
        w.scores.extend(s.tolist())
        w.labels.extend(y.tolist())
        w.flagged.extend(f.tolist())
        w.total += len(s)

    def update_records(
        self,
        scored: Sequence[Mapping[str, Any]],
        labels: Sequence[bool],
    ) -> None:
        """Update from what the service recorded at scoring time, one mapping per labelled txn.

        Each mapping is ``{"scores": {version: score, ...}, "flagged": {version: bool, ...}}``
        (``flagged`` optional, per version; missing versions use the threshold).
        Versions absent from a mapping (e.g. a shadow added later) are simply not updated for it.
        """
        if len(scored) != len(labels):
            msg = f"{len(scored)} records but {len(labels)} labels"
            raise ValueError(msg)
        by_version: dict[str, tuple[list[float], list[bool], list[bool]]] = {}
        thr = self.review_threshold
        for rec, label in zip(scored, labels, strict=True):
            flags = rec.get("flagged") or {}
            for version, score in (rec.get("scores") or {}).items():
                s, y, f = by_version.setdefault(version, ([], [], []))
                s.append(float(score))
                y.append(bool(label))
                f.append(bool(flags.get(version, float(score) >= thr)))
        for version, (s, y, f) in by_version.items():
            self.update(version, s, y, f)

    def versions(self) -> list[str]:
        return list(self._w)

    def count(self, version: str) -> int:
        """Labelled transactions currently in ``version``'s window."""
        w = self._w.get(version)
        return 0 if w is None else len(w.labels)

    def average_precision(self, version: str) -> float:
        """AP over the window (``nan`` with no fraud in it, or an unknown version)."""
        w = self._w.get(version)
        if w is None or not w.labels:
            return float("nan")
        return average_precision(np.fromiter(w.scores, float), np.fromiter(w.labels, bool))

    def review_precision(self, version: str) -> float:
        """Of the window's flagged (review/block) transactions, the share that were fraud."""
        w = self._w.get(version)
        if w is None:
            return float("nan")
        f = np.fromiter(w.flagged, bool)
        if not f.any():
            return float("nan")
        return float(np.fromiter(w.labels, bool)[f].mean())

    def snapshot(self) -> dict[str, dict[str, float]]:
        """``{version: {average_precision, review_precision, n, frauds}}`` for every version."""
        out: dict[str, dict[str, float]] = {}
        for v, w in self._w.items():
            out[v] = {
                "average_precision": self.average_precision(v),
                "review_precision": self.review_precision(v),
                "n": float(len(w.labels)),
                "frauds": float(sum(w.labels)),
            }
        return out

    def forget(self, version: str) -> None:
        """Drop a version (retired) so its gauge can be removed."""
        self._w.pop(version, None)

    def save(self, path: Path | str) -> None:
        """Checkpoint the windows (JSON, atomic) so a restart keeps the rolling figures."""
        data = {
            "window": self.window,
            "review_threshold": self.review_threshold,
            "versions": {
                v: {"s": list(w.scores), "y": list(w.labels), "f": list(w.flagged), "t": w.total}
                for v, w in self._w.items()
            },
        }
        atomic_write_text(Path(path), json.dumps(data))

    @classmethod
    def load(cls, path: Path | str) -> RollingEvaluator:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        ev = cls(int(data["window"]), float(data["review_threshold"]))
        for v, d in data["versions"].items():
            ev.update(v, d["s"], d["y"], d["f"])
            ev._w[v].total = int(d["t"])
        return ev
