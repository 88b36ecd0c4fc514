"""Reference histograms: what each feature and the score looked like when a model was trained.

Stored in the model's metadata (``reference_histograms``) so drift monitoring can compare a live
sliding window against them (population stability index) without the training data.

A histogram is a JSON-ready dict::

    {"edges": [e1, ..., ek], "counts": [c0, ..., ck], "missing": m, "n": N}

with ``k + 1`` right-closed bins ``(-inf, e1], (e1, e2], ..., (ek, +inf)``. Inner edges are the
deciles (by default; actual data values) of the finite values, deduplicated, so heavy-tailed
features get useful bins and discrete ones (counts) get one bin per frequent value.
``missing`` counts NaN/inf values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

DEFAULT_BINS = 10
#: Percentile grid stored beside the deciles for the two-sample KS statistic (models/drift.py).
KS_BINS = 100
#: Extra score bins above the top decile: a fraud wave moves a few percent of the scores into
#: the review/block region, which one top-decile bin would hardly notice.
SCORE_TAIL = (0.95, 0.99)
#: Added to every bin's share in :func:`population_stability_index` so empty bins stay finite.
PSI_EPSILON = 1e-4


def reference_histogram(
    values: Sequence[float] | FloatArray, bins: int = DEFAULT_BINS, tail: Sequence[float] = ()
) -> dict[str, Any]:
    """Quantile-binned histogram of ``values`` (see the module docstring); ``tail`` adds edges
    at these quantiles (finer bins where decisions are made, for the score)."""
    if bins < 1:
        msg = f"bins must be >= 1, got {bins}"
        raise ValueError(msg)
    v = np.asarray(values, dtype=np.float64).ravel()
    finite = np.isfinite(v)
    f = v[finite]
    if len(f):
        probs = np.union1d(np.linspace(0.0, 1.0, bins + 1)[1:-1], np.asarray(tail, dtype=float))
        qs = np.quantile(f, probs, method="inverted_cdf")
        edges = np.unique(qs)
    else:
        edges = np.empty(0)
    counts = np.bincount(np.searchsorted(edges, f, side="left"), minlength=len(edges) + 1)
    return {
        "edges": edges.tolist(),
        "counts": counts.astype(int).tolist(),
        "missing": int((~finite).sum()),
        "n": int(len(v)),
    }


def reference_histograms(
    x: FloatArray, names: Sequence[str], bins: int = DEFAULT_BINS
) -> dict[str, dict[str, Any]]:
    """One histogram per column of ``x``, keyed by feature name."""
    m = np.asarray(x, dtype=np.float64)
    if m.ndim != 2 or m.shape[1] != len(names):
        msg = f"x has shape {m.shape}, expected (n, {len(names)})"
        raise ValueError(msg)
    return {str(name): reference_histogram(m[:, j], bins) for j, name in enumerate(names)}


def bin_counts(reference: Mapping[str, Any], values: Sequence[float] | FloatArray) -> list[int]:
    """Counts of ``values`` in ``reference``'s bins (missing values are not counted)."""
    edges = np.asarray(reference["edges"], dtype=np.float64)
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    counts = np.bincount(np.searchsorted(edges, v, side="left"), minlength=len(edges) + 1)
    return [int(c) for c in counts]


def population_stability_index(
    reference: Mapping[str, Any], values: Sequence[float] | FloatArray
) -> float:
    """PSI of ``values`` against ``reference`` (``sum((a - e) * ln(a / e))`` over bins).

    ``nan`` when either side has no finite value. Rule of thumb: < 0.1 stable, 0.1-0.25 some
    shift, > 0.25 a real change.
    """
    expected = np.asarray(reference["counts"], dtype=np.float64)
    actual = np.asarray(bin_counts(reference, values), dtype=np.float64)
    if expected.sum() <= 0 or actual.sum() <= 0:
        return math.nan
    e = expected / expected.sum() + PSI_EPSILON
    a = actual / actual.sum() + PSI_EPSILON
    return float(np.sum((a - e) * np.log(a / e)))


def drift_reference(
    x: FloatArray,
    names: Sequence[str],
    scores: Sequence[float] | FloatArray,
    fraud_rate: float | None = None,
) -> dict[str, Any]:
    """A model's ``reference_histograms`` metadata: deciles (PSI) and percentiles (KS) of every
    feature column of ``x`` and of ``scores``, and the training fraud rate."""
    return {
        "features": reference_histograms(x, names),
        "score": reference_histogram(scores, tail=SCORE_TAIL),
        "features_ks": reference_histograms(x, names, KS_BINS),
        "score_ks": reference_histogram(scores, KS_BINS),
        "fraud_rate": fraud_rate,
    }
