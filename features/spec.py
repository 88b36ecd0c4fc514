"""Declarative feature specs: which windowed aggregate of which entity, at which bucket resolution.

A feature is ``FeatureSpec(name, entity, window_seconds, agg, resolution_seconds)``:

* ``entity`` is an event field (``card_id``, ``merchant_id``, ``customer_id``, ``device_id``, ...);
  the aggregate covers the events that share this field's value with the scored event.
* ``agg`` is ``count`` (events), ``sum`` (of ``amount``) or ``mean`` (sum / count; 0.0 when the
  count is 0).
* ``window_seconds`` is the window length; it must be a multiple of ``resolution_seconds``, the size
  of the time buckets kept in Redis. Buckets are aligned to the Unix epoch
  (bucket index = ``floor(ts_ms / (1000 * resolution_seconds))``), so the window start is rounded
  down to a bucket boundary: the value for an event at ``t`` covers the ``window / resolution``
  buckets ending with the bucket that contains ``t``, i.e. between ``window - resolution`` and
  ``window`` seconds of history (see :mod:`features.kernels`).

Feature names are stable and derived as ``{entity}_{agg}_{window}`` (:func:`default_name`), with the
window written as ``{n}d`` when it is a whole number of days and at least 2 days, else ``{n}h`` for
whole hours, ``{n}m`` for whole minutes, ``{n}s`` otherwise: ``card_id_count_1h``,
``card_id_sum_24h``, ``merchant_id_count_24h``, ``card_id_mean_7d``, ``ip_count_10m``.

:data:`DEFAULT_SPEC` (resolutions are part of the contract):

=============================  ======  ==========
feature                        window  resolution
=============================  ======  ==========
card_id_count_1h               1 h     60 s
card_id_sum_1h                 1 h     60 s
card_id_mean_1h                1 h     60 s
card_id_count_24h              24 h    600 s
card_id_sum_24h                24 h    600 s
card_id_mean_24h               24 h    600 s
merchant_id_count_24h          24 h    600 s
customer_id_count_24h          24 h    600 s
=============================  ======  ==========

so a 1 h window starts at most one minute late and a 24 h window at most ten minutes late.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

AGGREGATIONS = ("count", "sum", "mean")
MIN_WINDOW_SECONDS = 60
MAX_WINDOW_SECONDS = 90 * 86400
#: Upper bound on window / resolution: the kernels scan up to this many buckets per event and
#: a hash may hold this many buckets per entity value.
MAX_BUCKETS = 4320

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def window_label(seconds: int) -> str:
    """``86400 -> '24h'``, ``604800 -> '7d'``, ``600 -> '10m'``, ``90 -> '90s'``."""
    if seconds % 86400 == 0 and seconds >= 2 * 86400:
        return f"{seconds // 86400}d"
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"


def default_name(entity: str, agg: str, window_seconds: int) -> str:
    """The stable feature name ``{entity}_{agg}_{window_label}``."""
    return f"{entity}_{agg}_{window_label(window_seconds)}"


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """One windowed aggregate; validated on construction (``ValueError`` naming the feature)."""

    name: str
    entity: str
    window_seconds: int
    agg: str
    resolution_seconds: int

    def __post_init__(self) -> None:
        label = f"feature {self.name!r}"
        if not isinstance(self.name, str) or not _IDENT.match(self.name):
            msg = f"{label}: name must be an identifier (letters, digits, _)"
            raise ValueError(msg)
        if not isinstance(self.entity, str) or not _IDENT.match(self.entity):
            msg = f"{label}: entity must be an event field name, got {self.entity!r}"
            raise ValueError(msg)
        if self.agg not in AGGREGATIONS:
            msg = f"{label}: unknown agg {self.agg!r} (known: {', '.join(AGGREGATIONS)})"
            raise ValueError(msg)
        for attr in ("window_seconds", "resolution_seconds"):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, int):
                msg = f"{label}: {attr} must be an integer number of seconds, got {value!r}"
                raise ValueError(msg)
        w, r = self.window_seconds, self.resolution_seconds
        if not MIN_WINDOW_SECONDS <= w <= MAX_WINDOW_SECONDS:
            msg = (
                f"{label}: window {w}s is outside [{MIN_WINDOW_SECONDS}s, "
                f"{MAX_WINDOW_SECONDS}s (90 days)]"
            )
            raise ValueError(msg)
        if r <= 0:
            msg = f"{label}: resolution must be positive, got {r}s"
            raise ValueError(msg)
        if w % r:
            msg = f"{label}: window {w}s is not a multiple of resolution {r}s"
            raise ValueError(msg)
        if w // r > MAX_BUCKETS:
            msg = (
                f"{label}: window {w}s / resolution {r}s = {w // r} buckets, more than "
                f"{MAX_BUCKETS}; use a coarser resolution"
            )
            raise ValueError(msg)

    @classmethod
    def of(
        cls,
        entity: str,
        agg: str,
        window_seconds: int,
        resolution_seconds: int,
        name: str | None = None,
    ) -> FeatureSpec:
        """Build a spec whose name defaults to :func:`default_name`."""
        return cls(
            name or default_name(entity, agg, window_seconds),
            entity,
            window_seconds,
            agg,
            resolution_seconds,
        )

    @property
    def n_buckets(self) -> int:
        return self.window_seconds // self.resolution_seconds


Spec = tuple[FeatureSpec, ...]


def validate_spec(features: Iterable[FeatureSpec]) -> Spec:
    """A non-empty tuple of features with unique names (raises ``ValueError`` otherwise)."""
    spec = tuple(features)
    if not spec:
        msg = "feature spec is empty"
        raise ValueError(msg)
    seen: set[str] = set()
    for i, f in enumerate(spec):
        if not isinstance(f, FeatureSpec):
            msg = f"feature #{i}: not a FeatureSpec: {f!r}"
            raise ValueError(msg)
        if f.name in seen:
            msg = f"feature #{i}: duplicate name {f.name!r}"
            raise ValueError(msg)
        seen.add(f.name)
    return spec


def feature_names(spec: Iterable[FeatureSpec]) -> list[str]:
    """Column names, in spec order."""
    return [f.name for f in spec]


DEFAULT_SPEC: Spec = validate_spec(
    [
        FeatureSpec.of("card_id", "count", 3600, 60),
        FeatureSpec.of("card_id", "sum", 3600, 60),
        FeatureSpec.of("card_id", "mean", 3600, 60),
        FeatureSpec.of("card_id", "count", 86400, 600),
        FeatureSpec.of("card_id", "sum", 86400, 600),
        FeatureSpec.of("card_id", "mean", 86400, 600),
        FeatureSpec.of("merchant_id", "count", 86400, 600),
        FeatureSpec.of("customer_id", "count", 86400, 600),
    ]
)


def parse_duration(value: object) -> int:
    """Seconds from an int, or a string like ``"90"``, ``"90s"``, ``"10m"``, ``"1h"``, ``"7d"``."""
    if isinstance(value, bool):
        msg = f"not a duration: {value!r}"
        raise ValueError(msg)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return int(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    msg = f"not a duration: {value!r} (use seconds or e.g. '90s', '10m', '1h', '7d')"
    raise ValueError(msg)


_YAML_KEYS = {
    "name",
    "entity",
    "agg",
    "window",
    "window_seconds",
    "resolution",
    "resolution_seconds",
}


def _entry(i: int, raw: object) -> FeatureSpec:
    if not isinstance(raw, Mapping):
        msg = f"feature #{i}: expected a mapping, got {type(raw).__name__}"
        raise ValueError(msg)
    entry: Mapping[str, Any] = raw
    where = f"feature #{i}" + (f" ({entry['name']})" if "name" in entry else "")
    unknown = sorted(str(k) for k in entry if k not in _YAML_KEYS)
    if unknown:
        msg = f"{where}: unknown keys {unknown} (allowed: {sorted(_YAML_KEYS)})"
        raise ValueError(msg)
    try:
        for required in ("entity", "agg"):
            if required not in entry:
                msg = f"missing {required!r}"
                raise ValueError(msg)
        window = entry.get("window", entry.get("window_seconds"))
        resolution = entry.get("resolution", entry.get("resolution_seconds"))
        if window is None or resolution is None:
            msg = "needs 'window' and 'resolution' (seconds or '10m', '1h', '7d' ...)"
            raise ValueError(msg)
        return FeatureSpec.of(
            str(entry["entity"]),
            str(entry["agg"]),
            parse_duration(window),
            parse_duration(resolution),
            name=str(entry["name"]) if entry.get("name") is not None else None,
        )
    except ValueError as exc:
        msg = f"{where}: {exc}"
        raise ValueError(msg) from None


def spec_from_list(entries: object) -> Spec:
    """Build and validate a spec from a list of mappings (the YAML form, already parsed)."""
    if isinstance(entries, Mapping) and "features" in entries:
        entries = entries["features"]
    if not isinstance(entries, list):
        msg = "feature spec must be a list of mappings (or a mapping with a 'features' list)"
        raise ValueError(msg)
    features = [_entry(i, raw) for i, raw in enumerate(entries)]
    return validate_spec(features)


def load_spec(path: str | Path) -> Spec:
    """Load a YAML list of features; errors name the file and the entry index/name.

    Example::

        - {entity: card_id, agg: count, window: 1h, resolution: 1m}
        - {entity: card_id, agg: sum, window: 24h, resolution: 10m}
        - {name: merchant_velocity, entity: merchant_id, agg: count, window: 86400, resolution: 600}
    """
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        msg = f"{p}: not valid YAML: {exc}"
        raise ValueError(msg) from None
    try:
        return spec_from_list(data)
    except ValueError as exc:
        msg = f"{p}: {exc}"
        raise ValueError(msg) from None
