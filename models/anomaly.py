"""Unsupervised anomaly signal: River Half-Space Trees over scaled features, scored in batches.

Half-Space Trees (Tan, Ting & Liu 2011) learn what "normal" feature vectors look like from the
stream itself, without labels, so they flag new fraud patterns before any chargeback arrives.

How it is made cheap and stable enough for the hot path:

* **Scaling.** HST splits each feature's range ``[0, 1]`` at random, and picks features in
  proportion to their range, so every feature must live on the same scale. Velocity features are
  heavy-tailed counts and sums: each value becomes ``log1p(max(x, 0))`` and is then mapped
  linearly to ``[0, 1]`` with per-feature bounds taken from the first ``warmup`` rows learned
  (the 0.1 % and 99.9 % quantiles; outside values are clipped). Bounds are then frozen, so the
  trees' split points keep their meaning. Missing values (NaN) become 0 before scaling (for the
  count/sum/mean features that is "nothing in the window").
* **Learning on a sample.** ``learn_batch`` passes each row to River's ``learn_one`` with
  probability ``learn_fraction`` (a seeded generator, part of the checkpoint, so a restored model
  makes the same choices). Normal traffic is plentiful; a sample describes it as well.
* **Compiled scoring.** River's ``score_one`` walks every tree in Python (~37 µs per row with 25
  trees). The trees' structure (feature, threshold) is fixed once built and the masses used for
  scoring (``r_mass``) only change when a window of ``window_size`` learned rows completes, so the
  trees are flattened into heap-ordered numpy arrays (re-read only after such a pivot) and one
  Numba kernel walks all trees for the whole batch. It computes exactly River's ``score_one``
  (same additions in the same order; tested).
* Scores are in ``[0, 1]``, higher = more anomalous; **0.0 until the first window is complete**
  (no opinion, like the online logistic model before its first label).

Satisfies the scoring half of ``engine.protocols.BatchScorer`` (``explain_batch`` returns no
contributions) so it can be recorded like a shadow; ``learn_batch(features)`` takes no labels.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numba
import numpy as np
import numpy.typing as npt
from river import anomaly

from models._atomic import atomic_write_bytes
from models._checks import config_version, feature_matrix, unique_names

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
_Q_LO, _Q_HI = 0.001, 0.999


@numba.njit(cache=True, nogil=True)
def _hst_mass_sum(
    z: FloatArray, feat: IntArray, thr: FloatArray, mass: FloatArray, height: int, limit: float
) -> FloatArray:  # pragma: no cover - compiled
    """River's ``_walk_score`` summed over trees, for every row (heap-ordered node arrays)."""
    n = z.shape[0]
    n_trees = feat.shape[0]
    out = np.zeros(n)
    for i in range(n):
        acc = 0.0
        for t in range(n_trees):
            node = 0
            depth_pow = 1.0
            stopped = False
            for _ in range(height):
                r = mass[t, node]
                acc += r * depth_pow
                if r < limit:
                    stopped = True
                    break
                if z[i, feat[t, node]] < thr[t, node]:
                    node = 2 * node + 1
                else:
                    node = 2 * node + 2
                depth_pow *= 2.0
            if not stopped:
                acc += mass[t, node] * depth_pow
        out[i] = acc
    return out


class AnomalyModel:
    """Half-Space Trees on log-scaled, range-normalised features; see the module docstring."""

    def __init__(
        self,
        feature_names: Sequence[str],
        n_trees: int = 25,
        height: int = 8,
        window_size: int = 1000,
        learn_fraction: float = 0.1,
        warmup: int = 1000,
        seed: int = 42,
    ) -> None:
        self._feature_names = unique_names(feature_names)
        if not 0.0 < learn_fraction <= 1.0:
            msg = f"learn_fraction must be in (0, 1], got {learn_fraction}"
            raise ValueError(msg)
        if warmup < 1 or window_size < 1 or n_trees < 1 or height < 1:
            msg = "warmup, window_size, n_trees and height must be >= 1"
            raise ValueError(msg)
        self._config: dict[str, Any] = {
            "kind": "river-hst",
            "feature_names": self._feature_names,
            "n_trees": int(n_trees),
            "height": int(height),
            "window_size": int(window_size),
            "learn_fraction": float(learn_fraction),
            "warmup": int(warmup),
            "seed": int(seed),
        }
        self._version = config_version("river-hst", self._config)
        self._hst: Any = anomaly.HalfSpaceTrees(
            n_trees=n_trees, height=height, window_size=window_size, seed=seed
        )
        self._rng = np.random.default_rng(seed)
        self._buffer: list[FloatArray] = []  # log-space rows seen before the bounds are fixed
        self._lo: FloatArray | None = None
        self._span: FloatArray | None = None
        self._n_learned = 0
        self._compiled_at = -1  # number of pivots the compiled arrays reflect
        self._pivots = 0
        self._feat: IntArray = np.zeros((0, 0), dtype=np.int64)
        self._thr: FloatArray = np.zeros((0, 0))
        self._mass: FloatArray = np.zeros((0, 0))

    # -- identity --------------------------------------------------------------------------
    @property
    def version(self) -> str:
        """Stable id of this configuration (does not change while learning)."""
        return self._version

    @property
    def feature_names(self) -> list[str]:
        return list(self._feature_names)

    @property
    def n_learned(self) -> int:
        """Rows passed to River's ``learn_one`` (after sampling and warm-up)."""
        return self._n_learned

    @property
    def ready(self) -> bool:
        """True once the first window is complete and scores are meaningful."""
        return self._pivots > 0  # River's first window ends with its first pivot

    # -- transforms ------------------------------------------------------------------------
    def _check(self, features: FloatArray) -> FloatArray:
        return feature_matrix(features, len(self._feature_names), self._version)

    @staticmethod
    def _log(x: FloatArray) -> FloatArray:
        z = np.where(np.isfinite(x), x, 0.0)
        return np.asarray(np.log1p(np.maximum(z, 0.0)))

    def _scale(self, logx: FloatArray) -> FloatArray:
        assert self._lo is not None and self._span is not None  # noqa: S101 - after warm-up
        return np.asarray(np.clip((logx - self._lo) / self._span, 0.0, 1.0))

    def _fix_bounds(self) -> None:
        data = np.vstack(self._buffer)
        lo = np.quantile(data, _Q_LO, axis=0)
        hi = np.quantile(data, _Q_HI, axis=0)
        span = hi - lo
        self._lo = lo
        self._span = np.where(span > 1e-12, span, 1.0)
        rows = self._scale(data)
        self._buffer = []
        self._learn_scaled(rows)

    def _learn_scaled(self, rows: FloatArray) -> None:
        hst = self._hst
        names = self._feature_names
        for r in rows.tolist():
            hst.learn_one(dict(zip(names, r, strict=True)))
            if hst.counter == 0:  # River just pivoted its masses: recompile before scoring
                self._pivots += 1
            self._n_learned += 1

    # -- learning and scoring --------------------------------------------------------------
    def learn_batch(self, features: FloatArray, labels: Sequence[Any] | None = None) -> None:
        """Learn a random ``learn_fraction`` of the rows (labels, if given, are ignored)."""
        x = self._check(features)
        if x.shape[0] == 0:
            return
        take = self._rng.random(x.shape[0]) < self._config["learn_fraction"]
        if not take.any():
            return
        logx = self._log(x[take])
        if self._lo is None:
            self._buffer.append(logx)
            if sum(len(b) for b in self._buffer) >= self._config["warmup"]:
                self._fix_bounds()
            return
        self._learn_scaled(self._scale(logx))

    def _compile(self) -> None:
        """Flatten the trees into heap-ordered arrays (node i has children 2i+1 and 2i+2)."""
        hst = self._hst
        height = self._config["height"]
        n_nodes = 2 ** (height + 1) - 1
        index = {n: i for i, n in enumerate(self._feature_names)}
        n_trees = len(hst.trees)
        feat = np.zeros((n_trees, n_nodes), dtype=np.int64)
        thr = np.zeros((n_trees, n_nodes))
        mass = np.zeros((n_trees, n_nodes))
        for t, root in enumerate(hst.trees):
            stack: list[tuple[Any, int]] = [(root, 0)]
            while stack:
                node, i = stack.pop()
                mass[t, i] = node.r_mass
                children = getattr(node, "children", None)
                if children:
                    feat[t, i] = index[node.feature]
                    thr[t, i] = node.threshold
                    stack.append((children[0], 2 * i + 1))
                    stack.append((children[1], 2 * i + 2))
        self._feat, self._thr, self._mass = feat, thr, mass
        self._compiled_at = self._pivots

    def score_batch(self, features: FloatArray) -> FloatArray:
        """Anomaly score per row in [0, 1] (higher = more unusual); zeros until ready."""
        x = self._check(features)
        n = x.shape[0]
        if n == 0 or self._lo is None or not self.ready:
            return np.zeros(n, dtype=np.float64)
        if self._compiled_at != self._pivots:
            self._compile()
        z = np.ascontiguousarray(self._scale(self._log(x)))
        hst = self._hst
        total = _hst_mass_sum(
            z, self._feat, self._thr, self._mass, self._config["height"], 0.1 * hst.window_size
        )
        c = self._config
        max_score = c["n_trees"] * c["window_size"] * (2 ** (c["height"] + 1) - 1)  # River's
        return np.asarray(1.0 - total / max_score, dtype=np.float64)

    @staticmethod
    def warm_up() -> None:
        """Compile (or load from Numba's cache) the scoring kernel now, not on the first batch."""
        one = np.zeros((1, 1))
        _hst_mass_sum(one, np.zeros((1, 3), dtype=np.int64), one[:, [0, 0, 0]], one[:, [0, 0, 0]],
                      1, 0.0)  # fmt: skip

    def score_one_reference(self, row: FloatArray) -> float:
        """River's own ``score_one`` on one row (slow; for tests and debugging)."""
        if self._lo is None:
            return 0.0
        z = self._scale(self._log(self._check(np.asarray(row, dtype=np.float64)[None, :])))[0]
        return float(self._hst.score_one(dict(zip(self._feature_names, z.tolist(), strict=True))))

    def explain_batch(
        self, features: FloatArray, top: int = 3
    ) -> list[list[tuple[str, float, float]]]:
        """No per-feature contributions for an anomaly score: an empty list per row."""
        return [[] for _ in range(self._check(features).shape[0])]

    # -- checkpoints -----------------------------------------------------------------------
    def save(self, path: Path | str) -> None:
        """Checkpoint everything learned (pickle, written atomically)."""
        state = {
            "format": CHECKPOINT_FORMAT,
            "config": self._config,
            "hst": self._hst,
            "rng": self._rng.bit_generator.state,
            "buffer": self._buffer,
            "lo": self._lo,
            "span": self._span,
            "n_learned": self._n_learned,
            "pivots": self._pivots,
        }
        atomic_write_bytes(Path(path), pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))

    @classmethod
    def load(cls, path: Path | str) -> AnomalyModel:
        """Restore a checkpoint written by :meth:`save` (our own data dir only: it is a pickle)."""
        with Path(path).open("rb") as fh:
            state = pickle.load(fh)  # noqa: S301 - our own checkpoint file, never user input
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            msg = f"{path} is not an AnomalyModel checkpoint (format {CHECKPOINT_FORMAT})"
            raise ValueError(msg)
        c = state["config"]
        self = cls(
            c["feature_names"], c["n_trees"], c["height"], c["window_size"],
            c["learn_fraction"], c["warmup"], c["seed"],
        )  # fmt: skip
        self._hst = state["hst"]
        self._rng.bit_generator.state = state["rng"]
        self._buffer = list(state["buffer"])
        self._lo, self._span = state["lo"], state["span"]
        self._n_learned = int(state["n_learned"])
        self._pivots = int(state["pivots"])
        return self

    @classmethod
    def load_or_new(cls, path: Path, feature_names: Sequence[str]) -> AnomalyModel:
        """The checkpoint if it exists and has these features, else a fresh model."""
        if path.exists():
            try:
                model = cls.load(path)
            except Exception:
                log.exception("anomaly checkpoint %s unreadable; starting a fresh model", path)
                return cls(feature_names)
            if model.feature_names == list(feature_names):
                return model
            log.warning("anomaly checkpoint %s has other features; starting fresh", path)
        return cls(feature_names)

    def __repr__(self) -> str:
        return f"AnomalyModel(version={self._version!r}, n_learned={self._n_learned})"
