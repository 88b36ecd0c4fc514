"""LightGBM champion/shadow scorer: one ``predict`` per micro-batch, plus per-row explanations.

Satisfies ``engine.protocols.BatchScorer`` structurally (this module never imports ``engine``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import numpy.typing as npt

from models._atomic import atomic_write_text
from models._checks import feature_matrix
from models.paths import TreePaths, UnsupportedTreeError

FloatArray = npt.NDArray[np.float64]

VERSION_HEX_CHARS = 12
#: How :meth:`LightGBMScorer.explain_batch` computes contributions: ``shap`` (TreeSHAP,
#: LightGBM's ``pred_contrib``) or ``path`` (each split on the row's path, models.paths).
EXPLAIN_METHODS = ("shap", "path")


def content_version(model_text: str) -> str:
    """Version = sha256 prefix of the model text, so equal models get equal versions anywhere."""
    return hashlib.sha256(model_text.encode("utf-8")).hexdigest()[:VERSION_HEX_CHARS]


class LightGBMScorer:
    """A trained binary LightGBM model that scores and explains whole feature matrices.

    The booster is canonicalised on construction: it is dumped to text (keeping only the best
    iteration when early stopping set one) and reloaded from that text. Scoring, saving and the
    version hash therefore all see exactly the same trees, and a save/load round trip keeps the
    version. ``num_threads`` is passed to every ``predict``; 0 means LightGBM's OpenMP default.
    ``explain_threads`` (default: ``num_threads``) to the contributions of :meth:`explain_batch`,
    which cost ~1-2 ms a row with TreeSHAP: worth a second core where a scoring ``predict`` is
    not. ``explain="path"`` credits each split on the row's path instead (:mod:`models.paths`,
    ~100 times cheaper, a different ranking); a model it cannot walk (categorical splits) keeps
    TreeSHAP.
    """

    def __init__(
        self, booster: lgb.Booster, num_threads: int = 0, explain_threads: int | None = None,
        explain: str = "shap",
    ) -> None:  # fmt: skip
        best = booster.best_iteration
        text: str = booster.model_to_string(num_iteration=best if best and best > 0 else -1)
        self._init_from_text(text, num_threads, explain_threads, explain)

    def _init_from_text(
        self, text: str, num_threads: int, explain_threads: int | None, explain: str = "shap"
    ) -> None:
        if explain not in EXPLAIN_METHODS:
            msg = f"explain method {explain!r}: expected one of {', '.join(EXPLAIN_METHODS)}"
            raise ValueError(msg)
        self._booster = lgb.Booster(model_str=text)
        # Re-dump so the hash is of the canonical form (LightGBM's text round trip is stable).
        self._text: str = self._booster.model_to_string()
        self._version = content_version(self._text)
        self._feature_names: list[str] = list(self._booster.feature_name())
        self._num_threads = num_threads
        self._explain_threads = num_threads if explain_threads is None else explain_threads
        self._paths: TreePaths | None = None
        if explain == "path":
            try:  # built (~0.2 s for 300 trees) and compiled at load, not in a flagged batch
                self._paths = TreePaths.of(self._booster)
                self._paths.contributions(np.zeros((1, len(self._feature_names))))
            except UnsupportedTreeError:
                pass  # explained by TreeSHAP (explain_method says so)

    @property
    def explain_method(self) -> str:
        """What :meth:`explain_batch` computes: ``shap`` or ``path``."""
        return "shap" if self._paths is None else "path"

    @classmethod
    def from_string(
        cls, model_text: str, num_threads: int = 0, explain_threads: int | None = None,
        explain: str = "shap",
    ) -> LightGBMScorer:  # fmt: skip
        """Build from LightGBM's native text format."""
        self = cls.__new__(cls)
        self._init_from_text(model_text, num_threads, explain_threads, explain)
        return self

    @classmethod
    def from_file(
        cls, path: Path | str, num_threads: int = 0, explain_threads: int | None = None,
        explain: str = "shap",
    ) -> LightGBMScorer:  # fmt: skip
        """Load a native LightGBM text model (from :meth:`save` or ``Booster.save_model``)."""
        text = Path(path).read_text(encoding="utf-8")
        return cls.from_string(text, num_threads, explain_threads, explain)

    def save(self, path: Path | str) -> None:
        """Write the native text model atomically (workers may be loading it concurrently)."""
        atomic_write_text(Path(path), self._text)

    @property
    def version(self) -> str:
        """12 hex chars of sha256 over the model text: changes iff the model content changes."""
        return self._version

    @property
    def feature_names(self) -> list[str]:
        """Feature names in the column order ``score_batch`` expects."""
        return list(self._feature_names)

    @property
    def model_text(self) -> str:
        """The canonical native model text (what :meth:`save` writes and the version hashes)."""
        return self._text

    @property
    def num_trees(self) -> int:
        """Number of trees actually used for scoring."""
        return int(self._booster.num_trees())

    def _check(self, features: FloatArray) -> FloatArray:
        return feature_matrix(features, len(self._feature_names), self._version)

    def _predict(self, x: FloatArray, threads: int | None = None, **kwargs: Any) -> FloatArray:
        n = self._num_threads if threads is None else threads
        out = self._booster.predict(x, num_threads=n, **kwargs)
        return np.asarray(out, dtype=np.float64)

    def raw_margin(self, features: FloatArray) -> FloatArray:
        """Raw log-odds per row (what the contributions of :meth:`explain_batch` sum to)."""
        x = self._check(features)
        if x.shape[0] == 0:
            return np.empty(0, dtype=np.float64)
        return self._predict(x, raw_score=True)

    def score_batch(self, features: FloatArray) -> FloatArray:
        """Fraud probability per row, shape (n,), values in [0, 1]; one ``predict`` per batch."""
        x = self._check(features)
        if x.shape[0] == 0:
            return np.empty(0, dtype=np.float64)
        return self._predict(x)

    def explain_batch(
        self, features: FloatArray, top: int = 3
    ) -> list[list[tuple[str, float, float]]]:
        """Top ``top`` (feature name, value, contribution) per row, by absolute contribution.

        Contributions are in raw log-odds space: SHAP values from ``pred_contrib=True``, or path
        contributions (:attr:`explain_method`); the bias is excluded here but
        ``sum(all contributions) + bias == raw_margin`` either way. TreeSHAP costs several times
        more than scoring, so call it on the rows that need reasons only.
        """
        x = self._check(features)
        n, n_features = x.shape
        if n == 0 or top <= 0:
            return [[] for _ in range(n)]
        if self._paths is not None:
            contrib = self._paths.contributions(x)[0]
        else:
            threads = self._explain_threads if n > 1 else self._num_threads
            # the bias (last) column is dropped
            contrib = self._predict(x, threads, pred_contrib=True)[:, :n_features]
        k = min(top, n_features)
        order = np.argsort(-np.abs(contrib), axis=1, kind="stable")[:, :k]
        rows = np.arange(n)[:, None]
        values = x[rows, order].tolist()
        contribs = contrib[rows, order].tolist()
        names = self._feature_names
        return [
            [(names[j], v, c) for j, v, c in zip(idx, vals, cons, strict=True)]
            for idx, vals, cons in zip(order.tolist(), values, contribs, strict=True)
        ]

    def __repr__(self) -> str:
        return (
            f"LightGBMScorer(version={self._version!r}, trees={self.num_trees}, "
            f"features={len(self._feature_names)})"
        )
