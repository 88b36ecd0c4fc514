"""The input checks and configuration ids every model in this package shares."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from models.errors import FeatureMismatchError

FloatArray = npt.NDArray[np.float64]


def unique_names(feature_names: Sequence[object]) -> list[str]:
    """The names as text; ValueError when one repeats (columns are addressed by name)."""
    names = [str(n) for n in feature_names]
    if len(set(names)) != len(names):
        msg = "feature_names must be unique"
        raise ValueError(msg)
    return names


def config_version(kind: str, config: dict[str, Any]) -> str:
    """``<kind>-<12 hex>`` of the configuration: stable while the model learns."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    return f"{kind}-{digest[:12]}"


def feature_matrix(features: FloatArray, n_features: int, model: str) -> FloatArray:
    """``features`` as a float64 matrix of ``n_features`` columns, else FeatureMismatchError
    (never score shifted columns silently)."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != n_features:
        got = x.shape[1] if x.ndim == 2 else -1
        raise FeatureMismatchError(n_features, got, model)
    return x
