"""Batch evaluation of rule sets."""

from __future__ import annotations

import random
import textwrap
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.protocols import RuleSetLike
from rules import RuleHit, RuleSet, load_rule_set
from rules.expr import scan
from tests.rules_support import FEATURES, RULES_DIR

HIGH_RISK = {"KP", "IR", "SY", "CU", "RU", "BY", "VE", "MM"}
BENIGN = {"event_id": "e", "card_id": "c", "merchant_id": "m", "amount": 25.0, "country": "FR"}


@pytest.fixture(scope="module")
def default() -> RuleSet:
    return load_rule_set(RULES_DIR, FEATURES)


def matrix(rows: Sequence[Mapping[str, float]], names: list[str] = FEATURES) -> np.ndarray:
    return np.array(
        [[float(r.get(n, 0.0)) for n in names] for r in rows], dtype=np.float64
    ).reshape(len(rows), len(names))


def ids(hits: list[RuleHit]) -> list[str]:
    return [h.rule_id for h in hits]


def load_text(tmp_path: Path, text: str) -> RuleSet:
    (tmp_path / "r.yaml").write_text(textwrap.dedent(text))
    return load_rule_set(tmp_path, FEATURES)


CRAFTED: dict[str, tuple[dict[str, Any], dict[str, float]]] = {
    "velocity_sum_1h": ({"amount": 50.0}, {"card_id_sum_1h": 10_500.0}),
    "card_testing_burst": ({"amount": 1.5}, {"card_id_count_1h": 8.0}),
    "large_amount": ({"amount": 5000.01}, {}),
    "high_risk_country": ({"amount": 20.0, "country": "IR"}, {}),
    "merchant_burst_24h": ({"amount": 20.0}, {"card_id_count_24h": 31.0, "card_id_mean_24h": 4.0}),
    "zero_amount_probing": ({"amount": 0.0}, {"card_id_zero_amount_count_1h": 3.0}),
}


def test_protocol_shape(default: RuleSet) -> None:
    rs: RuleSetLike = default
    out = rs.evaluate_batch([BENIGN], matrix([{}]), FEATURES)
    assert out == [[]]
    assert isinstance(rs.version, str)


def test_every_default_rule_fires_on_a_crafted_event(default: RuleSet) -> None:
    assert set(CRAFTED) == {r.id for r in default.rules}
    events = [{**BENIGN, **txn} for txn, _ in CRAFTED.values()] + [BENIGN]
    feats = [f for _, f in CRAFTED.values()] + [{}]
    out = default.evaluate_batch(events, matrix(feats), FEATURES)
    for rule_id, hits in zip([*CRAFTED, None], out, strict=True):
        assert ids(hits) == ([rule_id] if rule_id else [])
    assert default.evaluation_errors == 0
    hit = out[0][0]
    assert hit == RuleHit("velocity_sum_1h", "block", "velocity_amount_1h")
    assert (hit.rule_id, hit.action, hit.reason) == tuple(hit)


def test_hits_come_in_priority_order(default: RuleSet) -> None:
    event = {**BENIGN, "amount": 2.0, "country": "KP"}
    hits = default.evaluate(event, {"card_id_count_1h": 20, "card_id_sum_1h": 20_000})
    assert ids(hits) == ["velocity_sum_1h", "card_testing_burst", "high_risk_country"]


def reference(event: Mapping[str, Any], f: Mapping[str, float]) -> list[str]:
    """The default rules written out in Python."""
    out = []
    if f["card_id_sum_1h"] > 10000:
        out.append("velocity_sum_1h")
    if f["card_id_count_1h"] >= 8 and event["amount"] < 5:
        out.append("card_testing_burst")
    if f["card_id_zero_amount_count_1h"] >= 3:
        out.append("zero_amount_probing")
    if event["amount"] > 5000:
        out.append("large_amount")
    if event.get("country") in HIGH_RISK:
        out.append("high_risk_country")
    if f["card_id_count_24h"] >= 30 and f["card_id_mean_24h"] < 20:
        out.append("merchant_burst_24h")
    return out


def random_batch(n: int, seed: int = 7) -> tuple[list[dict[str, Any]], np.ndarray]:
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    for i in range(n):
        e: dict[str, Any] = {
            "event_id": f"e{i}",
            "ts": 1_700_000_000_000 + i,
            "card_id": f"c{rng.randrange(100)}",
            "merchant_id": f"m{rng.randrange(50)}",
            "amount": rng.choice([1.0, 3.99, 25.0, 480.0, 5200.0]),
            "channel": rng.choice(["web", "pos", "app"]),
        }
        if rng.random() < 0.8:
            e["country"] = rng.choice(["FR", "US", "KP", "IR", "DE"])
        events.append(e)
    x = np.array(
        [[rng.choice([0.0, 3.0, 8.0, 12.0, 35.0, 11_000.0]) for _ in FEATURES] for _ in range(n)]
    )
    return events, x


def test_batch_of_1000_matches_reference(default: RuleSet) -> None:
    events, x = random_batch(1000)
    errors_before = default.evaluation_errors
    out = default.evaluate_batch(events, x, FEATURES)
    assert len(out) == 1000
    for e, row, hits in zip(events, x, out, strict=True):
        assert ids(hits) == reference(e, dict(zip(FEATURES, row.tolist(), strict=True)))
    assert sum(map(len, out)) > 100
    assert default.evaluation_errors == errors_before


def test_feature_columns_are_matched_by_name(default: RuleSet) -> None:
    names = ["extra", *reversed(FEATURES)]
    f = {"card_id_sum_1h": 20_000.0, "extra": 1.0}
    out = default.evaluate_batch([BENIGN, BENIGN], matrix([f, {}], names), names)
    assert ids(out[0]) == ["velocity_sum_1h"]
    assert out[1] == []


def test_evaluation_errors_do_not_break_the_batch(tmp_path: Path) -> None:
    rs = load_text(
        tmp_path,
        """\
        rules:
          - {id: amount_big, condition: txn.amount > 100, action: review, reason: big}
          - {id: always, condition: "true", action: tag, reason: t}
        """,
    )
    events: list[dict[str, Any]] = [
        {"amount": 500.0},
        {"card_id": "no amount"},
        {"amount": "text"},
        {"amount": 1.0},
    ]
    out = rs.evaluate_batch(events, np.zeros((4, 0)), [])
    assert [ids(h) for h in out] == [["amount_big", "always"], ["always"], ["always"], ["always"]]
    assert rs.evaluation_errors == 2
    assert rs.evaluation_errors_by_rule == {"amount_big": 2}


def test_unconvertible_values_are_treated_as_missing(tmp_path: Path) -> None:
    rs = load_text(
        tmp_path,
        """\
        rules:
          - {id: has_ip, condition: has(txn.ip), action: tag, reason: ip}
          - {id: big, condition: txn.amount > 1, action: tag, reason: big}
        """,
    )
    event: dict[str, Any] = {"ip": object(), "amount": 2.0}
    out = rs.evaluate_batch([event], np.zeros((1, 0)), [])
    assert ids(out[0]) == ["big"]


def test_missing_feature_column_counts_as_error() -> None:
    rs = load_rule_set(RULES_DIR, FEATURES)
    out = rs.evaluate_batch([{**BENIGN, "amount": 6000.0}], np.zeros((1, 1)), ["other"])
    assert ids(out[0]) == ["large_amount"]
    # velocity_sum_1h, merchant_burst_24h and zero_amount_probing error; card_testing_burst does
    # not, because CEL's && absorbs an error when the other side is false (6000 < 5).
    assert rs.evaluation_errors_by_rule == {
        "velocity_sum_1h": 1, "merchant_burst_24h": 1, "zero_amount_probing": 1,
    }  # fmt: skip


def test_shape_mismatch_is_a_caller_error(default: RuleSet) -> None:
    with pytest.raises(ValueError, match="shape"):
        default.evaluate_batch([BENIGN], np.zeros((2, len(FEATURES))), FEATURES)


def test_empty_batch(default: RuleSet) -> None:
    assert default.evaluate_batch([], np.zeros((0, len(FEATURES))), FEATURES) == []


def test_disabled_rules_never_fire(tmp_path: Path) -> None:
    rs = load_text(
        tmp_path,
        """\
        rules:
          - {id: disabled, condition: "true", action: block, reason: x, enabled: false}
          - {id: enabled, condition: "true", action: tag, reason: y}
        """,
    )
    assert [r.id for r in rs.rules] == ["disabled", "enabled"]
    events, x = random_batch(200)
    for hits in rs.evaluate_batch(events, x, FEATURES):
        assert ids(hits) == ["enabled"]


def test_lists_from_several_files(tmp_path: Path) -> None:
    (tmp_path / "lists.yaml").write_text("lists:\n  vip_cards: [c1, c2]\n  mccs: [7995, 5967]\n")
    rs = load_text(
        tmp_path,
        """\
        rules:
          - id: vip
            condition: txn.card_id in lists.vip_cards
            action: allow
            reason: vip
            priority: 1
          - id: gambling
            condition: has(txn.mcc) && int(txn.mcc) in lists.mccs
            action: review
            reason: gambling_mcc
        """,
    )
    out = rs.evaluate_batch(
        [{"card_id": "c2"}, {"card_id": "c9", "mcc": "7995"}, {"card_id": "c9"}],
        np.zeros((3, 0)),
        [],
    )
    assert [ids(h) for h in out] == [["vip"], ["gambling"], []]
    assert out[0][0].action == "allow"


def test_dynamic_access_sees_all_fields(tmp_path: Path) -> None:
    rs = load_text(
        tmp_path,
        """\
        rules:
          - id: dyn
            condition: "'promo' in txn && f['card_id_count_1h'] > 1"
            action: tag
            reason: p
        """,
    )
    out = rs.evaluate_batch([{"promo": "x"}, {}], matrix([{"card_id_count_1h": 2}] * 2), FEATURES)
    assert [ids(h) for h in out] == [["dyn"], []]


def test_scan_references() -> None:
    refs = scan("x.f.y > 1 && f.a > 2 && lists.l.exists(v, v == txn['b']) && size(txn) > 0")
    assert [n for n, _ in refs.fields["f"]] == ["a"]
    assert [n for n, _ in refs.fields["lists"]] == ["l"]
    assert [n for n, _ in refs.fields["txn"]] == ["b"]
    assert refs.dynamic == {"txn"}
    assert refs.bound == {"v"}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["amount", "country", "channel", "card_id", "junk"]),
            st.one_of(
                st.none(),
                st.booleans(),
                st.integers(),
                st.floats(allow_nan=True),
                st.text(max_size=5),
                st.lists(st.integers(), max_size=3),
            ),
        ),
        max_size=5,
    ),
    st.floats(allow_nan=True, allow_infinity=True),
)
def test_hostile_events_never_raise(events: list[dict[str, Any]], value: float) -> None:
    rs = load_rule_set(RULES_DIR, FEATURES)
    out = rs.evaluate_batch(events, np.full((len(events), len(FEATURES)), value), FEATURES)
    assert len(out) == len(events)


@given(st.text(max_size=200))
def test_scan_never_raises(text: str) -> None:
    scan(text)


def test_timing_1000_events(default: RuleSet) -> None:
    events, x = random_batch(1000, seed=3)
    default.evaluate_batch(events, x, FEATURES)
    best = min(_timed(default, events, x) for _ in range(5))
    print(f"\nevaluate_batch: {best / len(events) * 1e6:.1f} us/event ({len(default)} rules)")
    assert best / len(events) < 1e-3  # generous: well under 1 ms per event


def _timed(rs: RuleSet, events: list[dict[str, Any]], x: np.ndarray) -> float:
    t0 = time.perf_counter()
    rs.evaluate_batch(events, x, FEATURES)
    return time.perf_counter() - t0
