"""Drift statistics against a model's training reference, cheap enough to run on every batch.

A :class:`DriftReference` is built from a model's ``reference_histograms`` metadata (see
:mod:`models.reference`). Each monitored column (every feature the reference knows, plus the
score) gets one fine grid: the union of its PSI bin edges (deciles) and its KS edges
(percentiles, when the model stored them; else the decile edges). A value becomes one small bin
index on that grid (``searchsorted``, one call per column per batch) and non-finite values go to
a "missing" slot. Counts of bin indices are all the statistics need, and counts add up: over a
window, an hour, several workers or a whole file.

* **PSI** per column: :func:`models.reference.population_stability_index` over the decile bins
  (the fine bins fold into them exactly, because the decile edges are grid edges).
* **KS**: the two-sample Kolmogorov-Smirnov statistic ``max |F_ref(t) - F_cur(t)|`` evaluated at
  the reference's KS edges (percentiles: a resolution of 1 % of the reference mass).
* **Missing ratio**: share of NaN/inf values.

:class:`DriftMonitor` keeps the counts of a sliding window of the last ``window`` rows (a ring of
bin indices: each batch adds its rows and subtracts the rows it pushes out) and of tumbling
event-time hours, plus decision shares, River change detectors (ADWIN, Page-Hinkley) on the score
and on the online model's error, and the fraud rate among arrived labels.

>>> ref = DriftReference.from_metadata(
...     {"features": {"f": {"edges": [1.0, 2.0], "counts": [5, 5, 5], "missing": 0, "n": 15}},
...      "score": {"edges": [0.5], "counts": [10, 5], "missing": 0, "n": 15}}, ["f"])
>>> m = DriftMonitor(ref, window=100, min_rows=1)
>>> m.update_batch(np.array([[0.5], [1.5], [3.0]]), np.array([0.1, 0.2, 0.9]),
...                np.array([0, 0, 0]), np.array([0, 0, 2]))
>>> float(round(m.sliding().psi[0], 6)), m.sliding().n
(0.0, 3)
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from numba import njit
from river import drift

from models.reference import PSI_EPSILON

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Name of the score column (not a feature name: those never start with "@").
SCORE = "@score"
DECISIONS = ("allow", "review", "block")
HOUR_MS = 3_600_000
#: Score detectors see means of this many consecutive scores.
DETECTOR_CHUNK = 10
DETECTORS = (
    "score_adwin",
    "score_page_hinkley",
    "online_error_adwin",
    "online_error_page_hinkley",
    "label_rate_adwin",
)


@dataclass(frozen=True)
class ColumnReference:
    """One monitored column: its fine grid and the reference on it."""

    name: str
    psi_edges: FloatArray
    grid: FloatArray
    ref_psi_counts: FloatArray  # len(psi_edges) + 1
    ks_positions: IntArray  # position of each KS edge in grid
    ref_ks_cdf: FloatArray  # reference CDF at each KS edge
    ref_missing: int
    ref_n: int

    @property
    def missing_slot(self) -> int:
        return len(self.grid) + 1


def _column(
    name: str, hist: Mapping[str, Any], ks_hist: Mapping[str, Any] | None
) -> ColumnReference:
    psi_edges = np.asarray(hist["edges"], dtype=np.float64)
    ks = ks_hist if ks_hist is not None and ks_hist.get("edges") else hist
    ks_edges = np.asarray(ks["edges"], dtype=np.float64)
    grid = np.union1d(psi_edges, ks_edges)
    ks_counts = np.asarray(ks["counts"], dtype=np.float64)
    finite = ks_counts.sum()
    cdf = (
        np.cumsum(ks_counts)[: len(ks_edges)] / finite
        if finite > 0
        else np.full(len(ks_edges), np.nan)
    )
    return ColumnReference(
        name=name,
        psi_edges=psi_edges,
        grid=grid,
        ref_psi_counts=np.asarray(hist["counts"], dtype=np.float64),
        ks_positions=np.searchsorted(grid, ks_edges).astype(np.int64),
        ref_ks_cdf=cdf,
        ref_missing=int(hist.get("missing", 0)),
        ref_n=int(hist.get("n", 0)),
    )


@njit(cache=True)
def _bin_kernel(
    values_t: FloatArray,
    grids: FloatArray,
    starts: IntArray,
    missing: IntArray,
    out: npt.NDArray[Any],
) -> None:  # pragma: no cover - compiled
    """``searchsorted(grid, v, side="left")`` per value, ``missing`` for NaN/inf: one compiled
    pass with a branch-free binary search (numpy's per-column calls mispredict a branch per
    step on unsorted values, several times slower)."""
    c_n, n = values_t.shape
    for i in range(c_n):
        s = starts[i]
        length = starts[i + 1] - s
        miss = missing[i]
        for j in range(n):
            x = values_t[i, j]
            if not np.isfinite(x):
                out[i, j] = miss
                continue
            if length == 0:
                out[i, j] = 0
                continue
            # branch-free lower bound: the loop count depends on the grid only
            base, size = 0, length
            while size > 1:
                half = size >> 1
                base += half * (grids[s + base + half - 1] < x)
                size -= half
            out[i, j] = base + (grids[s + base] < x)


@dataclass
class WindowStats:
    """Statistics of one set of counts, per column (same order as the reference's columns)."""

    names: list[str]
    n: int
    psi: FloatArray
    ks: FloatArray
    missing_ratio: FloatArray
    decisions: dict[str, float] = field(default_factory=dict)

    def by_name(self) -> dict[str, dict[str, float]]:
        return {
            c: {"psi": float(self.psi[i]), "ks": float(self.ks[i]),
                "missing_ratio": float(self.missing_ratio[i])}
            for i, c in enumerate(self.names)
        }  # fmt: skip


class DriftReference:
    """The columns a model's reference knows, their grids, and the vectorised statistics."""

    def __init__(
        self, columns: Sequence[ColumnReference], version: str = "", fraud_rate: float = math.nan
    ) -> None:
        self.columns = list(columns)
        self.version = version
        self.fraud_rate = fraud_rate
        self.names = [c.name for c in self.columns]
        c_n = len(self.columns)
        self.width = max((c.missing_slot + 1 for c in self.columns), default=1)
        self.dtype = np.uint8 if self.width <= 256 else np.uint16
        self.offsets = (np.arange(c_n, dtype=np.int64) * self.width)[None, :]
        self.missing_slots = np.array([c.missing_slot for c in self.columns], dtype=np.int64)
        self._grids = np.concatenate([c.grid for c in self.columns]) if c_n else np.zeros(0)
        self._grid_starts = np.cumsum([0] + [len(c.grid) for c in self.columns]).astype(np.int64)
        # PSI: every fine slot of every column folds into one global PSI slot (or a dump slot).
        psi_group = np.full((c_n, self.width), -1, dtype=np.int64)
        starts, ref_shares, col_of = [], [], []
        slot = 0
        for i, c in enumerate(self.columns):
            fine_upper = np.append(c.grid, np.inf)  # upper edge of fine bins 0..len(grid)
            psi_bin = np.searchsorted(c.psi_edges, fine_upper, side="left")
            psi_group[i, : len(fine_upper)] = slot + psi_bin
            starts.append(slot)
            k = len(c.psi_edges) + 1
            total = c.ref_psi_counts.sum()
            ref_shares.append(c.ref_psi_counts / total if total > 0 else np.full(k, np.nan))
            col_of.extend([i] * k)
            slot += k
        self._n_psi = slot
        self._psi_group = np.where(psi_group < 0, slot, psi_group).ravel()
        self._psi_starts = np.array(starts, dtype=np.int64)
        self._ref_shares = np.concatenate(ref_shares) if ref_shares else np.zeros(0)
        self._psi_col = np.array(col_of, dtype=np.int64)
        # KS: flat positions of every column's KS edges in the (column, slot) matrix.
        self._ks_cols = [i for i, c in enumerate(self.columns) if len(c.ks_positions)]
        self._ks_flat = np.concatenate(
            [i * self.width + self.columns[i].ks_positions for i in self._ks_cols]
        ) if self._ks_cols else np.zeros(0, dtype=np.int64)  # fmt: skip
        self._ks_starts = np.cumsum(
            [0] + [len(self.columns[i].ks_positions) for i in self._ks_cols[:-1]]
        ).astype(np.int64)
        self._ks_ref = (
            np.concatenate([self.columns[i].ref_ks_cdf for i in self._ks_cols])
            if self._ks_cols else np.zeros(0)
        )  # fmt: skip
        self._ks_col_flat = (
            np.concatenate([[i] * len(self.columns[i].ks_positions) for i in self._ks_cols])
            .astype(np.int64) if self._ks_cols else np.zeros(0, dtype=np.int64)
        )  # fmt: skip

    @classmethod
    def from_metadata(
        cls,
        reference: Mapping[str, Any] | None,
        feature_names: Sequence[str],
        version: str = "",
        exclude: Sequence[str] = (),
    ) -> DriftReference:
        """Columns = ``feature_names`` the reference has (in that order, less ``exclude``), then
        the score."""
        reference = reference or {}
        feats = reference.get("features") or {}
        feats_ks = reference.get("features_ks") or {}
        cols = [
            _column(n, feats[n], feats_ks.get(n))
            for n in feature_names
            if n in feats and n not in exclude
        ]
        if reference.get("score"):
            cols.append(_column(SCORE, reference["score"], reference.get("score_ks")))
        rate = reference.get("fraud_rate")
        return cls(cols, version, float(rate) if rate is not None else math.nan)

    @property
    def feature_names(self) -> list[str]:
        return [n for n in self.names if n != SCORE]

    @property
    def has_score(self) -> bool:
        return bool(self.names) and self.names[-1] == SCORE

    # -- binning ---------------------------------------------------------------------------
    def bin_columns(self, values_t: FloatArray) -> npt.NDArray[Any]:
        """Fine bin index of every value of ``values_t`` (columns x rows, in column order)."""
        out = np.empty(values_t.shape, dtype=self.dtype)
        if len(self.columns):
            _bin_kernel(
                np.ascontiguousarray(values_t, dtype=np.float64), self._grids, self._grid_starts,
                self.missing_slots, out,
            )  # fmt: skip
        return out

    def bin_batch(self, values: FloatArray) -> npt.NDArray[Any]:
        """:meth:`bin_columns` of a rows x columns matrix (returns columns x rows)."""
        return self.bin_columns(np.ascontiguousarray(np.asarray(values, dtype=np.float64).T))

    def counts(self, bins: npt.NDArray[Any]) -> IntArray:
        """(columns x slots) counts of a columns x rows matrix of bin indices."""
        flat = (bins.astype(np.int64) + self.offsets.T).ravel()
        out: IntArray = np.bincount(flat, minlength=len(self.columns) * self.width).reshape(
            len(self.columns), self.width
        )
        return out

    def empty_counts(self) -> IntArray:
        return np.zeros((len(self.columns), self.width), dtype=np.int64)

    # -- statistics ------------------------------------------------------------------------
    def stats(self, counts: IntArray, n: int, decisions: Mapping[str, int] | None = None,
              min_rows: int = 1) -> WindowStats:  # fmt: skip
        """PSI, KS and missing ratio of ``counts`` (nan for a column with < min_rows values)."""
        c_n = len(self.columns)
        cf = counts.astype(np.float64)
        total = cf.sum(axis=1)
        missing = cf[np.arange(c_n), self.missing_slots] if c_n else np.zeros(0)
        finite = total - missing
        psi = np.full(c_n, np.nan)
        ks = np.full(c_n, np.nan)
        if c_n and n >= min_rows:
            grouped = np.bincount(self._psi_group, weights=cf.ravel(), minlength=self._n_psi + 1)
            a = grouped[: self._n_psi] / np.maximum(finite[self._psi_col], 1.0) + PSI_EPSILON
            e = self._ref_shares + PSI_EPSILON
            psi = np.add.reduceat((a - e) * np.log(a / e), self._psi_starts)
            psi[finite < max(min_rows, 1)] = np.nan
            if self._ks_cols:
                cum = np.cumsum(cf, axis=1).ravel()[self._ks_flat]
                cur = cum / np.maximum(finite[self._ks_col_flat], 1.0)
                d = np.maximum.reduceat(np.abs(cur - self._ks_ref), self._ks_starts)
                ks[self._ks_cols] = d
                ks[finite < max(min_rows, 1)] = np.nan
        ratio = missing / np.maximum(total, 1.0) if c_n else np.zeros(0)
        if n < min_rows:
            ratio = np.full(c_n, np.nan)
        shares: dict[str, float] = {}
        if decisions is not None:
            k = sum(decisions.values())
            shares = {d: (decisions.get(d, 0) / k if k else math.nan) for d in DECISIONS}
        return WindowStats(list(self.names), n, psi, ks, ratio, shares)

    def shares(self, counts: IntArray) -> list[dict[str, Any]]:
        """Per column: reference and current shares over the PSI bins (for reports)."""
        out = []
        for i, c in enumerate(self.columns):
            fine_upper = np.append(c.grid, np.inf)
            psi_bin = np.searchsorted(c.psi_edges, fine_upper, side="left")
            cur = np.bincount(psi_bin, weights=counts[i, : len(fine_upper)].astype(np.float64),
                              minlength=len(c.psi_edges) + 1)  # fmt: skip
            ref = c.ref_psi_counts
            out.append({
                "edges": c.psi_edges.tolist(),
                "reference": (ref / ref.sum()).tolist() if ref.sum() else [],
                "current": (cur / cur.sum()).tolist() if cur.sum() else [0.0] * len(cur),
                "reference_missing": c.ref_missing / c.ref_n if c.ref_n else 0.0,
                "current_missing": float(counts[i, c.missing_slot]) / max(counts[i].sum(), 1),
            })  # fmt: skip
        return out


def _adwin() -> Any:
    return drift.ADWIN()  # type: ignore[no-untyped-call]  # River leaves ADWIN's __init__ untyped


def decision_codes(decisions: Sequence[str]) -> IntArray:
    """allow/review/block as 0/1/2 (anything else counts as allow)."""
    code = {d: i for i, d in enumerate(DECISIONS)}
    return np.fromiter((code.get(d, 0) for d in decisions), dtype=np.int64, count=len(decisions))


@dataclass
class HourCounts:
    hour: int  # epoch ms // HOUR_MS
    counts: IntArray
    n: int = 0
    decisions: IntArray = field(default_factory=lambda: np.zeros(len(DECISIONS), dtype=np.int64))


class DriftMonitor:
    """Sliding-window and per-hour drift statistics, change detectors and the label fraud rate.

    Not thread-safe (the worker calls it under its batch lock).
    """

    def __init__(
        self,
        reference: DriftReference,
        window: int = 50_000,
        min_rows: int = 1000,
        lateness_ms: int = 300_000,
        keep_hours: int = 48,
        label_window: int = 5000,
    ) -> None:
        if window < 1:
            msg = f"window must be >= 1, got {window}"
            raise ValueError(msg)
        self.reference = reference
        self.window = window
        self.min_rows = min_rows
        self.lateness_ms = lateness_ms
        c_n = len(reference.columns)
        self._ring = np.zeros((c_n, window), dtype=reference.dtype)  # bins, column-major
        self._ring_dec = np.zeros(window, dtype=np.int64)
        self._pos = 0
        self._filled = 0
        self._counts = reference.empty_counts()
        self._dec = np.zeros(len(DECISIONS), dtype=np.int64)
        self._hours: dict[int, HourCounts] = {}
        self._watermark = -1
        self.closed: deque[tuple[int, WindowStats]] = deque(maxlen=keep_hours)
        #: Counts of closed and open hours not yet taken by :meth:`drain_hours`.
        self._undrained: dict[int, HourCounts] = {}
        self.late_rows = 0
        self.detectors: dict[str, Any] = {
            "score_adwin": _adwin(),
            "score_page_hinkley": drift.PageHinkley(),
            "online_error_adwin": _adwin(),
            "online_error_page_hinkley": drift.PageHinkley(),
            "label_rate_adwin": _adwin(),
        }
        self.detections = dict.fromkeys(DETECTORS, 0)
        self._labels: deque[bool] = deque(maxlen=label_window)
        self._score_carry = np.zeros(0)

    # -- transactions ----------------------------------------------------------------------
    def update_batch(
        self,
        features: FloatArray,
        scores: FloatArray,
        ts_ms: IntArray,
        decisions: IntArray,
        columns: Sequence[int] | None = None,
    ) -> None:
        """Add one batch: ``features`` (rows x columns; ``columns`` picks and orders them as
        ``reference.feature_names``, default all), ``scores`` (nan where no model scored), event
        times and decision codes (:func:`decision_codes`)."""
        ref = self.reference
        n = len(scores)
        if n == 0:
            return
        f_n = len(ref.feature_names)
        values_t = np.empty((len(ref.columns), n))
        if f_n:
            ft = np.asarray(features, dtype=np.float64).T
            values_t[:f_n] = ft if columns is None else ft[np.asarray(columns)]
        if ref.has_score:
            values_t[f_n] = scores
        bins = ref.bin_columns(values_t)
        batch_counts = ref.counts(bins)
        self._slide(bins, batch_counts, decisions)
        self._tumble(bins, batch_counts, np.asarray(ts_ms, dtype=np.int64), decisions)
        self._detect_means(("score_adwin", "score_page_hinkley"), scores[np.isfinite(scores)])

    def _slide(self, bins: npt.NDArray[Any], batch_counts: IntArray, decisions: IntArray) -> None:
        ref, w = self.reference, self.window
        if bins.shape[1] > w:
            bins, decisions = bins[:, -w:], decisions[-w:]
            batch_counts = ref.counts(bins)
        n = bins.shape[1]
        idx = (self._pos + np.arange(n)) % w
        n_old = max(0, self._filled + n - w)
        if n_old:  # the oldest rows leave: they sit where the last n_old new ones go
            old = idx[n - n_old :]
            self._counts -= ref.counts(self._ring[:, old])
            self._dec -= np.bincount(self._ring_dec[old], minlength=len(DECISIONS))
        self._ring[:, idx] = bins
        self._ring_dec[idx] = decisions
        self._counts += batch_counts
        self._dec += np.bincount(decisions, minlength=len(DECISIONS))
        self._pos = int((self._pos + n) % w)
        self._filled = min(w, self._filled + n)

    def _tumble(
        self, bins: npt.NDArray[Any], batch_counts: IntArray, ts_ms: IntArray, decisions: IntArray
    ) -> None:
        ref = self.reference
        hours = ts_ms // HOUR_MS
        closed_before = (self._watermark - self.lateness_ms) // HOUR_MS  # hours < this are closed
        first, last = int(hours.min()), int(hours.max())
        for h in [first] if first == last else np.unique(hours).tolist():
            mask = None if first == last else hours == h
            if self._watermark >= 0 and h < closed_before and h not in self._hours:
                self.late_rows += len(hours) if mask is None else int(mask.sum())
                continue
            hc = self._hours.get(h)
            if hc is None:
                hc = self._hours[h] = HourCounts(h, ref.empty_counts())
            if mask is None:
                delta, dsel = batch_counts, decisions
            else:
                delta, dsel = ref.counts(bins[:, mask]), decisions[mask]
            ddec = np.bincount(dsel, minlength=len(DECISIONS))
            und = self._undrained.get(h)
            if und is None:
                und = self._undrained[h] = HourCounts(h, ref.empty_counts())
            for target in (hc, und):
                target.counts += delta
                target.n += len(dsel)
                target.decisions += ddec
        self._watermark = max(self._watermark, int(ts_ms.max()))
        closed_before = (self._watermark - self.lateness_ms) // HOUR_MS
        for h in [h for h in self._hours if h < closed_before]:
            hc = self._hours.pop(h)
            dec = dict(zip(DECISIONS, hc.decisions.tolist(), strict=True))
            self.closed.append((h, ref.stats(hc.counts, hc.n, dec, self.min_rows)))

    def _detect_means(self, names: Sequence[str], values: FloatArray) -> None:
        """Feed the detectors means of ``DETECTOR_CHUNK`` consecutive values (the rest waits for
        the next batch): a tenth of the per-value cost, and means are closer to normal."""
        pending = np.concatenate((self._score_carry, values))
        k = len(pending) // DETECTOR_CHUNK * DETECTOR_CHUNK
        self._score_carry = pending[k:]
        if k:
            self._detect(names, pending[:k].reshape(-1, DETECTOR_CHUNK).mean(axis=1))

    def _detect(self, names: Sequence[str], values: FloatArray) -> None:
        for name in names:
            det = self.detectors[name]
            hits = 0
            for v in values.tolist():
                det.update(v)
                if det.drift_detected:
                    hits += 1
            self.detections[name] += hits

    def sliding(self) -> WindowStats:
        dec = dict(zip(DECISIONS, self._dec.tolist(), strict=True))
        return self.reference.stats(self._counts, self._filled, dec, self.min_rows)

    def last_hour(self) -> tuple[int, WindowStats] | None:
        """The most recent closed event-time hour and its statistics."""
        return self.closed[-1] if self.closed else None

    def drain_hours(self) -> list[HourCounts]:
        """Counts added per hour since the last call (to persist them: counts add up)."""
        out = list(self._undrained.values())
        self._undrained = {}
        return out

    @property
    def rows(self) -> int:
        """Rows in the sliding window."""
        return self._filled

    # -- labels ----------------------------------------------------------------------------
    def update_labels(self, labels: Sequence[bool], online_scores: Sequence[float | None]) -> None:
        """Arrived labels and the online model's score of each at scoring time (None: unknown)."""
        y = np.asarray(labels, dtype=np.float64)
        self._labels.extend(bool(v) for v in labels)
        self._detect(("label_rate_adwin",), y)
        err = [abs(float(t) - p) for t, p in zip(y, online_scores, strict=True) if p is not None]
        self._detect(("online_error_adwin", "online_error_page_hinkley"), np.asarray(err))

    @property
    def label_fraud_rate(self) -> float:
        """Share of fraud among the last ``label_window`` arrived labels (nan: none yet)."""
        return sum(self._labels) / len(self._labels) if self._labels else math.nan
