"""Windowed velocity features: declarative specs, Redis state + server-side script, Numba kernels.

Never imports ``engine``, ``agents`` or Faust; the engine uses :class:`RedisFeatureStore` through
its ``FeatureStore`` protocol.
"""

from __future__ import annotations

from features.spec import DEFAULT_SPEC, FeatureSpec, Spec, feature_names, load_spec
from features.store import RedisFeatureStore

__all__ = ["DEFAULT_SPEC", "FeatureSpec", "RedisFeatureStore", "Spec", "feature_names", "load_spec"]
