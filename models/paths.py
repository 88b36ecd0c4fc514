"""Path contributions of a LightGBM model: each split on a row's path credits its feature.

Walking a row down a tree, every split moves the node's output from the parent's value to the
child's; that change is credited to the split's feature (Saabas' method, as in
``treeinterpreter``). Per row the credits and the bias (the roots' values) add up to the raw
margin exactly, like TreeSHAP's, but they cost one walk per tree: about 3 µs a row for 300 trees
here against ~2 ms for LightGBM's TreeSHAP (``pred_contrib``), which would make reasons the
largest stage of a batch whenever many rows are flagged. The price: a feature split near the root
tends to get more credit than its SHAP value, so the two may order the top features differently.

>>> import lightgbm as lgb, numpy as np
>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=(500, 3)); y = (x[:, 0] + 0.3 * x[:, 1] > 0).astype(int)
>>> booster = lgb.train({"objective": "binary", "verbose": -1, "num_leaves": 7},
...                     lgb.Dataset(x, y), num_boost_round=20)
>>> paths = TreePaths.of(booster)
>>> contrib, bias = paths.contributions(x[:4])
>>> bool(np.allclose(contrib.sum(axis=1) + bias, booster.predict(x[:4], raw_score=True)))
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numba
import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: LightGBM's missing types (``missing_type`` in the model dump).
_MISSING = {"None": 0, "Zero": 1, "NaN": 2}
#: LightGBM treats |v| <= this as zero (``kZeroThreshold`` in its ``meta.h``).
_ZERO = 1e-35


class UnsupportedTreeError(ValueError):
    """The model has a split this walk does not reproduce (categorical): use TreeSHAP."""


@dataclass(frozen=True)
class TreePaths:
    """Every tree of a model as flat node arrays (children are global node indices, -1 on a
    leaf), and the index of each tree's root."""

    feature: IntArray
    threshold: FloatArray
    default_left: npt.NDArray[np.bool_]
    missing: IntArray
    left: IntArray
    right: IntArray
    value: FloatArray
    roots: IntArray
    n_features: int

    @classmethod
    def of(cls, booster: lgb.Booster) -> TreePaths:
        """The arrays of ``booster``'s trees (from its JSON dump); UnsupportedTreeError for a
        categorical split."""
        dump = booster.dump_model()
        cols: dict[str, list[Any]] = {k: [] for k in (
            "feature", "threshold", "default_left", "missing", "left", "right", "value",
        )}  # fmt: skip
        roots = []
        for tree in dump["tree_info"]:
            roots.append(_add_node(tree["tree_structure"], cols))
        return cls(
            np.asarray(cols["feature"], dtype=np.int64),
            np.asarray(cols["threshold"], dtype=np.float64),
            np.asarray(cols["default_left"], dtype=np.bool_),
            np.asarray(cols["missing"], dtype=np.int64),
            np.asarray(cols["left"], dtype=np.int64),
            np.asarray(cols["right"], dtype=np.int64),
            np.asarray(cols["value"], dtype=np.float64),
            np.asarray(roots, dtype=np.int64),
            int(dump["max_feature_idx"]) + 1,
        )

    def contributions(self, x: FloatArray) -> tuple[FloatArray, float]:
        """Per row and feature, the raw log-odds its splits moved the row's trees by, and the
        bias every row starts from: ``contributions.sum(axis=1) + bias`` is the raw margin."""
        rows = np.ascontiguousarray(x, dtype=np.float64)
        out = np.zeros((rows.shape[0], self.n_features), dtype=np.float64)
        _walk(rows, self.feature, self.threshold, self.default_left, self.missing, self.left,
              self.right, self.value, self.roots, out)  # fmt: skip
        return out, float(self.value[self.roots].sum())


def _add_node(node: dict[str, Any], cols: dict[str, list[Any]]) -> int:
    """Append ``node`` and its subtree to ``cols``; its index."""
    at = len(cols["value"])
    leaf = "leaf_value" in node
    if not leaf and node.get("decision_type", "<=") != "<=":
        msg = f"split of type {node.get('decision_type')!r}: path contributions need '<='"
        raise UnsupportedTreeError(msg)
    cols["feature"].append(-1 if leaf else int(node["split_feature"]))
    cols["threshold"].append(0.0 if leaf else float(node["threshold"]))
    cols["default_left"].append(False if leaf else bool(node["default_left"]))
    cols["missing"].append(0 if leaf else _MISSING[str(node["missing_type"])])
    cols["value"].append(float(node["leaf_value"] if leaf else node.get("internal_value", 0.0)))
    cols["left"].append(-1)
    cols["right"].append(-1)
    if not leaf:
        cols["left"][at] = _add_node(node["left_child"], cols)
        cols["right"][at] = _add_node(node["right_child"], cols)
    return at


@numba.njit(cache=True, nogil=True)
def _walk(
    x: FloatArray, feature: IntArray, threshold: FloatArray, default_left: npt.NDArray[np.bool_],
    missing: IntArray, left: IntArray, right: IntArray, value: FloatArray, roots: IntArray,
    out: FloatArray,
) -> None:  # fmt: skip
    """LightGBM's numerical decision (``Tree::NumericalDecision``) down every tree, crediting
    each split's change of value to its feature."""
    for i in range(x.shape[0]):
        for t in range(roots.shape[0]):
            node = roots[t]
            while left[node] >= 0:
                f = feature[node]
                v = x[i, f]
                kind = missing[node]
                if np.isnan(v) and kind != 2:
                    v = 0.0
                if (kind == 1 and abs(v) <= _ZERO) or (kind == 2 and np.isnan(v)):
                    child = left[node] if default_left[node] else right[node]
                elif v <= threshold[node]:
                    child = left[node]
                else:
                    child = right[node]
                out[i, f] += value[child] - value[node]
                node = child
