"""Declarative feature specs: which windowed aggregate, of which entity, at which bucket resolution.

A feature is one :class:`FeatureSpec` (or one YAML entry, see :func:`load_spec`):

``name``
    identifier; default ``{entity}_{agg}_{window}`` (:func:`default_name`), e.g.
    ``card_id_count_1h``, ``card_id_x_merchant_id_count_30d``,
    ``merchant_id_fraud_rate_7d_delay7d``.
``entity``
    an event field (``card_id``, ``merchant_id``, ``customer_id``, ``device_id``, ``ip``, any other
    field passed to the store) or a pair/tuple joined with ``+`` (``card_id+merchant_id``): the
    aggregate covers the events sharing these values with the scored event.
``agg``
    ``count``; ``sum`` / ``mean`` / ``std`` (population) / ``min`` / ``max`` of ``amount``;
    ``distinct`` (number of distinct values of ``field``, e.g. merchants per card);
    ``time_since_last`` (seconds since the latest *other* earlier-arrived event with ``ts <= t`` in
    the window; NaN if none); ``ratio`` (``amount / mean amount`` over the window, the event
    included); ``fraud_count`` / ``fraud_rate`` (labels, see below). ``mean``/``std`` are 0.0 on an
    empty window, ``min``/``max``/``ratio`` NaN.
``window_seconds`` / ``resolution_seconds``
    window length (1 min .. 90 days), a multiple of the resolution. Buckets are epoch-aligned:
    ``bucket(t) = floor(t / resolution)``; the window of an event at ``t`` is the
    ``window / resolution`` buckets ending with ``bucket(t - label_delay)``, so its start is rounded
    down to the resolution (it covers between ``window - resolution`` and ``window`` of history).
``label_delay_seconds``
    shifts the window into the past (handbook "delay period"): the window ends at ``t - delay``.
``filter``
    ``Filter(field, equals=...)`` or ``Filter(field, in_=(...))``: only events whose field matches
    feed the aggregate (the feature is still computed for every event). The field ``amount`` is
    compared as a number (``Filter("amount", equals="0")``: zero-amount authorisations, the
    account verifications and card-testing probes of payment traffic).
``source``
    ``transactions`` (default) or ``events`` (account events: ``type`` is a field, e.g.
    ``filter: {field: type, equals: password_change}``); event-sourced features are read by every
    transaction in the same round trip.

Label features: ``fraud_count`` counts the transactions of the entity in the (delayed) window that
were labelled fraud by a label whose ``ts <= t`` (the scored transaction's time) and that the store
had received before the batch; ``fraud_rate = fraud_count / count`` over the same window (0.0 when
no transaction). No label from the future of ``t`` is ever counted, in live or in replay.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from features._types import BoolArray

AGGREGATIONS = (
    "count",
    "sum",
    "mean",
    "std",
    "min",
    "max",
    "distinct",
    "time_since_last",
    "ratio",
    "fraud_count",
    "fraud_rate",
)
SOURCES = ("transactions", "events")
LABEL_AGGS = ("fraud_count", "fraud_rate")
MIN_WINDOW_SECONDS = 60
MAX_WINDOW_SECONDS = 90 * 86400
#: Upper bound on window / resolution (records kept per entity stay bounded).
MAX_BUCKETS = 4320

#: The one numeric field a filter may name; its values are compared as numbers.
AMOUNT_FIELD = "amount"

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


def entity_label(entity: str) -> str:
    return "_x_".join(entity.split("+"))


def default_name(
    entity: str,
    agg: str,
    window_seconds: int,
    field: str = "amount",
    label_delay_seconds: int = 0,
) -> str:
    """The stable feature name ``{entity}_{agg}_{window}`` (+ ``_{field}``, ``_delay{d}``)."""
    ent = entity_label(entity)
    w = window_label(window_seconds)
    if agg == "distinct":
        base = f"{ent}_distinct_{field}_{w}"
    elif agg == "ratio":
        base = f"{ent}_amount_ratio_mean_{w}"
    else:
        base = f"{ent}_{agg}_{w}"
    if label_delay_seconds:
        base += f"_delay{window_label(label_delay_seconds)}"
    return base


@dataclass(frozen=True, slots=True)
class Filter:
    """A condition on one event field: ``equals`` a value, or ``in_`` a set of values."""

    field: str
    equals: str | None = None
    in_: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.field, str) or not _IDENT.match(self.field):
            msg = f"filter field must be an event field name, got {self.field!r}"
            raise ValueError(msg)
        if (self.equals is None) == (self.in_ is None):
            msg = "filter needs exactly one of 'equals' or 'in'"
            raise ValueError(msg)
        if self.in_ is not None and not self.in_:
            msg = "filter 'in' must not be empty"
            raise ValueError(msg)
        if self.field == AMOUNT_FIELD:
            for v in self.values:
                try:
                    ok = math.isfinite(float(v))
                except (TypeError, ValueError):
                    ok = False
                if not ok:
                    msg = f"filter on amount: {v!r} is not a finite number"
                    raise ValueError(msg)

    @property
    def values(self) -> frozenset[str]:
        return frozenset([self.equals] if self.equals is not None else (self.in_ or ()))

    def key(self) -> str:
        return f"{self.field}={','.join(sorted(self.values))}"

    def mask(self, col: Sequence[Any] | None, n: int) -> BoolArray:
        """Which of ``n`` events pass (``col``: the field's values; missing field: none).

        >>> Filter("amount", equals="0").mask([0.0, 12.5], 2).tolist()
        [True, False]
        """
        if col is None:
            return np.zeros(n, dtype=bool)
        if self.field == AMOUNT_FIELD:
            wanted = np.array([float(v) for v in self.values], dtype=np.float64)
            return np.isin(np.asarray(col, dtype=np.float64), wanted)
        return np.fromiter(map(self.values.__contains__, map(str, col)), dtype=bool, count=n)


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """One windowed aggregate; validated on construction (``ValueError`` naming the feature)."""

    name: str
    entity: str
    window_seconds: int
    agg: str
    resolution_seconds: int
    field: str = "amount"
    filter: Filter | None = None
    label_delay_seconds: int = 0
    source: str = "transactions"

    def __post_init__(self) -> None:
        label = f"feature {self.name!r}"
        if not isinstance(self.name, str) or not _IDENT.match(self.name):
            msg = f"{label}: name must be an identifier (letters, digits, _)"
            raise ValueError(msg)
        parts = self.entity.split("+") if isinstance(self.entity, str) else []
        if not parts or not all(_IDENT.match(p) for p in parts) or len(set(parts)) != len(parts):
            msg = f"{label}: entity must be an event field name or fields joined by '+', got "
            msg += repr(self.entity)
            raise ValueError(msg)
        if self.agg not in AGGREGATIONS:
            msg = f"{label}: unknown agg {self.agg!r} (known: {', '.join(AGGREGATIONS)})"
            raise ValueError(msg)
        if self.source not in SOURCES:
            msg = f"{label}: unknown source {self.source!r} (known: {', '.join(SOURCES)})"
            raise ValueError(msg)
        if not isinstance(self.field, str) or not _IDENT.match(self.field):
            msg = f"{label}: field must be an event field name, got {self.field!r}"
            raise ValueError(msg)
        if self.agg == "distinct" and self.field == "amount":
            msg = f"{label}: distinct needs 'field' (the field whose values are counted)"
            raise ValueError(msg)
        if self.agg in ("sum", "mean", "std", "min", "max", "ratio") and self.field != "amount":
            msg = f"{label}: {self.agg} is over 'amount' only, got field {self.field!r}"
            raise ValueError(msg)
        if self.source == "events" and self.agg in ("sum", "mean", "std", "min", "max", "ratio"):
            msg = f"{label}: account events have no amount; use count, distinct or time_since_last"
            raise ValueError(msg)
        if self.agg in LABEL_AGGS and (self.source != "transactions" or self.filter is not None):
            msg = f"{label}: {self.agg} is over transactions without filter"
            raise ValueError(msg)
        if self.filter is not None and not isinstance(self.filter, Filter):
            msg = f"{label}: filter must be a Filter"
            raise ValueError(msg)
        for attr in ("window_seconds", "resolution_seconds", "label_delay_seconds"):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, int):
                msg = f"{label}: {attr} must be an integer number of seconds, got {value!r}"
                raise ValueError(msg)
        w, r, d = self.window_seconds, self.resolution_seconds, self.label_delay_seconds
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
        if d < 0 or d > MAX_WINDOW_SECONDS:
            msg = f"{label}: label_delay {d}s must be within [0, 90 days]"
            raise ValueError(msg)

    @classmethod
    def of(
        cls,
        entity: str,
        agg: str,
        window_seconds: int,
        resolution_seconds: int,
        name: str | None = None,
        *,
        field: str = "amount",
        filter: Filter | None = None,  # noqa: A002 - the spec's own word
        label_delay_seconds: int = 0,
        source: str = "transactions",
    ) -> FeatureSpec:
        """Build a spec whose name defaults to :func:`default_name`."""
        return cls(
            name or default_name(entity, agg, window_seconds, field, label_delay_seconds),
            entity,
            window_seconds,
            agg,
            resolution_seconds,
            field=field,
            filter=filter,
            label_delay_seconds=label_delay_seconds,
            source=source,
        )

    @property
    def n_buckets(self) -> int:
        return self.window_seconds // self.resolution_seconds

    @property
    def entity_fields(self) -> tuple[str, ...]:
        return tuple(self.entity.split("+"))

    @property
    def reach_seconds(self) -> int:
        """How far back (from the scored event's time) this feature may look."""
        return self.window_seconds + self.label_delay_seconds + self.resolution_seconds

    def event_fields(self) -> set[str]:
        """Every text field this feature reads (``amount`` always comes as its own array)."""
        out = set(self.entity_fields)
        if self.agg == "distinct":
            out.add(self.field)
        if self.filter is not None and self.filter.field != AMOUNT_FIELD:
            out.add(self.filter.field)
        return out


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


H, D = 3600, 86400
_ECOM = Filter("channel", equals="ecom")
_ZERO_AMOUNT = Filter(AMOUNT_FIELD, equals="0")
#: The default spec (31 features: 28 over transactions, 3 over account events). Resolutions
#: are part of the contract (see the module doc).
DEFAULT_SPEC: Spec = validate_spec(
    [
        # existing names (rules reference them)
        FeatureSpec.of("card_id", "count", H, 60),
        FeatureSpec.of("card_id", "sum", H, 60),
        FeatureSpec.of("card_id", "mean", H, 60),
        FeatureSpec.of("card_id", "count", D, 600),
        FeatureSpec.of("card_id", "sum", D, 600),
        FeatureSpec.of("card_id", "mean", D, 600),
        FeatureSpec.of("merchant_id", "count", D, 600),
        FeatureSpec.of("customer_id", "count", D, 600),
        # handbook: per card, count and mean amount over 1 (above), 7 and 30 days
        FeatureSpec.of("card_id", "count", 7 * D, H),
        FeatureSpec.of("card_id", "mean", 7 * D, H),
        FeatureSpec.of("card_id", "count", 30 * D, D),
        FeatureSpec.of("card_id", "mean", 30 * D, D),
        # handbook: per merchant, count and fraud rate over 1, 7, 30 days with a 7-day delay
        FeatureSpec.of("merchant_id", "count", D, H, label_delay_seconds=7 * D),
        FeatureSpec.of("merchant_id", "count", 7 * D, 6 * H, label_delay_seconds=7 * D),
        FeatureSpec.of("merchant_id", "count", 30 * D, D, label_delay_seconds=7 * D),
        FeatureSpec.of("merchant_id", "fraud_rate", D, H, label_delay_seconds=7 * D),
        FeatureSpec.of("merchant_id", "fraud_rate", 7 * D, 6 * H, label_delay_seconds=7 * D),
        FeatureSpec.of("merchant_id", "fraud_rate", 30 * D, D, label_delay_seconds=7 * D),
        # shape of the card's spending
        FeatureSpec.of("card_id", "std", 7 * D, H),
        FeatureSpec.of("card_id", "max", D, 600),
        FeatureSpec.of("card_id", "ratio", 30 * D, D),
        FeatureSpec.of("card_id", "time_since_last", 30 * D, D, name="card_id_time_since_last"),
        FeatureSpec.of("card_id", "distinct", D, 600, field="merchant_id"),
        FeatureSpec.of("card_id", "count", D, 600, "card_id_ecom_count_24h", filter=_ECOM),
        # card testing: zero-amount authorisations (account verifications) per card
        FeatureSpec.of(
            "card_id", "count", H, 60, "card_id_zero_amount_count_1h", filter=_ZERO_AMOUNT
        ),
        FeatureSpec.of("card_id+merchant_id", "count", 30 * D, D),
        FeatureSpec.of("device_id", "count", D, 600),
        FeatureSpec.of("ip", "count", H, 60),
        # account events
        FeatureSpec.of(
            "customer_id",
            "count",
            D,
            600,
            "customer_id_password_change_count_24h",
            filter=Filter("type", equals="password_change"),
            source="events",
        ),
        FeatureSpec.of(
            "customer_id",
            "count",
            H,
            60,
            "customer_id_device_added_count_1h",
            filter=Filter("type", equals="device_added"),
            source="events",
        ),
        FeatureSpec.of(
            "customer_id",
            "distinct",
            D,
            600,
            "customer_id_login_countries_24h",
            field="country",
            filter=Filter("type", equals="login"),
            source="events",
        ),
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
    "field",
    "filter",
    "label_delay",
    "source",
}


def _filter(raw: object) -> Filter:
    if not isinstance(raw, Mapping) or "field" not in raw:
        msg = "filter must be a mapping like {field: channel, equals: ecom} or {field: x, in: [..]}"
        raise ValueError(msg)
    unknown = sorted(str(k) for k in raw if k not in ("field", "equals", "in"))
    if unknown:
        msg = f"filter: unknown keys {unknown} (allowed: field, equals, in)"
        raise ValueError(msg)
    values = raw.get("in")
    if values is not None and not isinstance(values, Sequence | set):
        msg = "filter 'in' must be a list"
        raise ValueError(msg)
    return Filter(
        str(raw["field"]),
        equals=None if raw.get("equals") is None else str(raw["equals"]),
        in_=None if values is None else tuple(str(v) for v in values),
    )


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
        entity = entry["entity"]
        if isinstance(entity, list):
            entity = "+".join(str(e) for e in entity)
        return FeatureSpec.of(
            str(entity),
            str(entry["agg"]),
            parse_duration(window),
            parse_duration(resolution),
            name=str(entry["name"]) if entry.get("name") is not None else None,
            field=str(entry.get("field", "amount")),
            filter=_filter(entry["filter"]) if entry.get("filter") is not None else None,
            label_delay_seconds=parse_duration(entry.get("label_delay", 0)),
            source=str(entry.get("source", "transactions")),
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
        - {entity: [card_id, merchant_id], agg: count, window: 30d, resolution: 1d}
        - {entity: card_id, agg: distinct, field: merchant_id, window: 24h, resolution: 10m}
        - {name: card_ecom_24h, entity: card_id, agg: count, window: 24h, resolution: 10m,
           filter: {field: channel, equals: ecom}}
        - {entity: merchant_id, agg: fraud_rate, window: 7d, resolution: 6h, label_delay: 7d}
        - {name: pw_changes_24h, source: events, entity: customer_id, agg: count, window: 24h,
           resolution: 10m, filter: {field: type, equals: password_change}}
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


def gcd_all(values: Iterable[int]) -> int:
    out = 0
    for v in values:
        out = math.gcd(out, v)
    return out


@dataclass(frozen=True)
class Kind:
    """A stream of records kept per entity value: one Redis hash (field = entity value).

    ``source`` is ``transactions``, ``events`` or ``labels``; columns are float64: ``t`` (event
    time, ms; for a merged record the latest time it holds), ``c`` count, then as needed ``s`` sum
    of amounts, ``q`` sum of squares, ``mn``/``mx`` min/max, ``h`` a value hash (distinct) or the
    label time (labels).
    """

    source: str
    entity: str
    filter: Filter | None
    distinct_field: str | None
    columns: tuple[str, ...]
    features: tuple[int, ...] = field(default=())

    @property
    def ident(self) -> str:
        parts = [self.source[0], entity_label(self.entity)]
        if self.filter is not None:
            parts.append(self.filter.key())
        if self.distinct_field is not None:
            parts.append("d=" + self.distinct_field)
        return ":".join(parts)
