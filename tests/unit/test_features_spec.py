"""Feature spec: names, validation errors, YAML loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from features.spec import (
    DEFAULT_SPEC,
    FeatureSpec,
    default_name,
    feature_names,
    load_spec,
    parse_duration,
    validate_spec,
)


def test_default_spec_names_are_stable() -> None:
    assert len(DEFAULT_SPEC) >= 20
    assert feature_names(DEFAULT_SPEC)[:8] == [
        "card_id_count_1h",
        "card_id_sum_1h",
        "card_id_mean_1h",
        "card_id_count_24h",
        "card_id_sum_24h",
        "card_id_mean_24h",
        "merchant_id_count_24h",
        "customer_id_count_24h",
    ]
    resolutions = {f.name: f.resolution_seconds for f in DEFAULT_SPEC}
    assert resolutions["card_id_count_1h"] == 60
    assert resolutions["card_id_sum_24h"] == 600


@pytest.mark.parametrize(
    ("seconds", "label"),
    [(60, "1m"), (90, "90s"), (600, "10m"), (3600, "1h"), (86400, "24h"), (7 * 86400, "7d")],
)
def test_window_labels(seconds: int, label: str) -> None:
    assert default_name("ip", "count", seconds) == f"ip_count_{label}"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window_seconds": 3599}, "not a multiple of resolution 60s"),
        ({"window_seconds": 30, "resolution_seconds": 10}, "outside"),
        ({"window_seconds": 91 * 86400, "resolution_seconds": 86400}, "outside"),
        ({"agg": "median"}, "unknown agg 'median'"),
        ({"resolution_seconds": 0}, "resolution must be positive"),
        ({"window_seconds": 30 * 86400, "resolution_seconds": 60}, "buckets"),
        ({"name": "bad name"}, "name must be an identifier"),
        ({"entity": ""}, "entity must be"),
        ({"window_seconds": 3600.0}, "integer number of seconds"),
    ],
)
def test_validation_errors_name_the_feature(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "name": "f1",
        "entity": "card_id",
        "window_seconds": 3600,
        "agg": "count",
        "resolution_seconds": 60,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message) as info:
        FeatureSpec(**args)  # type: ignore[arg-type]
    assert repr(args["name"]) in str(info.value)


def test_duplicate_names_rejected() -> None:
    f = FeatureSpec.of("card_id", "count", 3600, 60)
    with pytest.raises(ValueError, match="#1: duplicate name 'card_id_count_1h'"):
        validate_spec([f, f])
    with pytest.raises(ValueError, match="empty"):
        validate_spec([])


def test_parse_duration() -> None:
    assert parse_duration(90) == 90
    assert parse_duration("90s") == 90
    assert parse_duration("10m") == 600
    assert parse_duration("1h") == 3600
    assert parse_duration("7d") == 7 * 86400
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("1 fortnight")


def test_load_spec(tmp_path: Path) -> None:
    path = tmp_path / "features.yaml"
    path.write_text(
        "- {entity: card_id, agg: count, window: 1h, resolution: 1m}\n"
        "- {entity: card_id, agg: mean, window: 24h, resolution: 10m}\n"
        "- {name: merchant_velocity, entity: merchant_id, agg: count, window: 86400,"
        " resolution_seconds: 600}\n"
    )
    spec = load_spec(path)
    assert feature_names(spec) == ["card_id_count_1h", "card_id_mean_24h", "merchant_velocity"]
    assert spec[1] == FeatureSpec("card_id_mean_24h", "card_id", 86400, "mean", 600)
    wrapped = tmp_path / "wrapped.yaml"
    wrapped.write_text("features:\n  - {entity: ip, agg: count, window: 10m, resolution: 1m}\n")
    assert feature_names(load_spec(wrapped)) == ["ip_count_10m"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "- {entity: card_id, agg: count, window: 1h, resolution: 1m}\n"
            "- {name: slow, entity: card_id, agg: sum, window: 3599, resolution: 60}\n",
            r"feature #1 \(slow\): feature 'slow': window 3599s is not a multiple",
        ),
        ("- {entity: card_id, agg: avg, window: 1h, resolution: 1m}\n", "#0.*unknown agg 'avg'"),
        ("- {entity: card_id, agg: count, window: 1h}\n", "#0.*needs 'window' and 'resolution'"),
        ("- {entity: card_id, agg: count, window: 1h, resolution: 1m, filter: x}\n", "#0.*filter"),
        ("- {entity: card_id, agg: count, window: 1h, resolution: 1m, colour: x}\n", "#0.*unknown"),
        (
            "- {name: d, entity: card_id, agg: distinct, window: 1h, resolution: 1m}\n",
            r"#0 \(d\).*distinct needs 'field'",
        ),
        ("- {agg: count, window: 1h, resolution: 1m}\n", "#0.*missing 'entity'"),
        ("- 42\n", "#0: expected a mapping"),
        ("entity: card_id\n", "must be a list"),
        ("- [unclosed\n", "not valid YAML"),
    ],
)
def test_load_spec_errors_name_file_and_entry(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        load_spec(path)
    assert str(path) in str(info.value)


def test_load_spec_with_filters_pairs_delay_and_events(tmp_path: Path) -> None:
    from features.spec import Filter

    path = tmp_path / "f.yaml"
    path.write_text(
        "- {entity: [card_id, merchant_id], agg: count, window: 30d, resolution: 1d}\n"
        "- {entity: card_id, agg: distinct, field: merchant_id, window: 24h, resolution: 10m}\n"
        "- {name: ecom, entity: card_id, agg: count, window: 24h, resolution: 10m,\n"
        "   filter: {field: channel, in: [ecom, moto]}}\n"
        "- {entity: merchant_id, agg: fraud_rate, window: 7d, resolution: 6h, label_delay: 7d}\n"
        "- {name: pw, source: events, entity: customer_id, agg: count, window: 24h,\n"
        "   resolution: 10m, filter: {field: type, equals: password_change}}\n"
    )
    spec = load_spec(path)
    assert feature_names(spec) == [
        "card_id_x_merchant_id_count_30d",
        "card_id_distinct_merchant_id_24h",
        "ecom",
        "merchant_id_fraud_rate_7d_delay7d",
        "pw",
    ]
    assert spec[2].filter == Filter("channel", in_=("ecom", "moto"))
    assert spec[3].label_delay_seconds == 7 * 86400
    assert spec[4].source == "events"
