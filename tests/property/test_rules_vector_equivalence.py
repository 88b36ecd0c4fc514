"""The vectorised evaluator gives exactly CEL's hits and error counts (property tests)."""

from __future__ import annotations

import math
from typing import Any

import cel
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rules.loader import SAMPLE_TRANSACTION
from rules.ruleset import CompiledRule, Rule, RuleSet
from rules.vector import Unsupported, compile_vector, type_of_value

FEATURES = ["a", "b", "c"]
LISTS: dict[str, list[Any]] = {
    "countries": ["KP", "IR", "FR", ""],
    "nums": [1, 2.5, 7995, -0.0, 2**53 + 1],
    "empty": [],
}
TXN_TYPES = {k: t for k, v in SAMPLE_TRANSACTION.items() if (t := type_of_value(v)) is not None}

# -- expressions ---------------------------------------------------------------------------------

doubles = st.sampled_from(["0.0", "1.5", "-2.0", "1e3", "10000.0", "0.1"])
ints = st.sampled_from(["0", "1", "3", "-4", "8", "5000", "9223372036854775807", "7995"])
strings = st.sampled_from(["'KP'", "'FR'", "''", '"web"', "'K'", "'é'"])
feature = st.sampled_from(["f.a", "f.b", "f.c", "f['a']", "f.absent"])
dbl_field = st.sampled_from(["txn.amount"])
int_field = st.sampled_from(["txn.ts"])
str_field = st.sampled_from(["txn.country", "txn.channel", "txn['mcc']", "txn.card_id"])


def _num() -> st.SearchStrategy[str]:
    base = st.one_of(doubles, ints, feature, dbl_field, int_field)
    return st.recursive(
        base,
        lambda inner: st.one_of(
            st.tuples(inner, st.sampled_from(["+", "-", "*", "/", "%"]), inner).map(
                lambda t: f"({t[0]} {t[1]} {t[2]})"
            ),
            inner.map(lambda e: f"-{e}"),
            inner.map(lambda e: f"double({e})"),
            str_expr.map(lambda e: f"size({e})"),
            st.tuples(bool_atom, inner, inner).map(lambda t: f"({t[0]} ? {t[1]} : {t[2]})"),
        ),
        max_leaves=4,
    )


str_expr = st.one_of(strings, str_field)
bool_atom = st.one_of(
    st.sampled_from(["true", "false", "has(txn.country)", "has(f.a)", "has(f.absent)"]),
    st.sampled_from(["has(txn.amount)", "has(txn.mcc)"]),
    st.tuples(str_expr, st.sampled_from(["==", "!=", "<", ">="]), str_expr).map(" ".join),
    st.tuples(str_expr, st.sampled_from(["startsWith", "endsWith", "contains"]), str_expr).map(
        lambda t: f"{t[0]}.{t[1]}({t[2]})"
    ),
    st.tuples(str_expr, st.sampled_from(["lists.countries", "lists.nums", "['KP', 1]"])).map(
        lambda t: f"{t[0]} in {t[1]}"
    ),
)
num_expr = _num()
cmp_expr = st.tuples(num_expr, st.sampled_from(["==", "!=", "<", "<=", ">", ">="]), num_expr).map(
    lambda t: f"{t[0]} {t[1]} {t[2]}"
)
in_expr = st.tuples(num_expr, st.sampled_from(["lists.nums", "lists.empty", "[1, 2.5, 'x']"])).map(
    lambda t: f"{t[0]} in {t[1]}"
)
bool_expr = st.recursive(
    st.one_of(bool_atom, cmp_expr, in_expr),
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["&&", "||"]), inner).map(lambda t: f"({' '.join(t)})"),
        inner.map(lambda e: f"!{e}"),
        st.tuples(inner, inner, inner).map(lambda t: f"({t[0]} ? {t[1]} : {t[2]})"),
        st.tuples(inner, st.sampled_from(["==", "!="]), inner).map(lambda t: f"({' '.join(t)})"),
    ),
    max_leaves=6,
)

# -- events ----------------------------------------------------------------------------------

special = st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e308, 5000.0, 7995.0])
odd = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.text(max_size=3))
event = st.fixed_dictionaries(
    {},
    optional={
        "amount": st.one_of(st.floats(), special, odd),
        "ts": st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from([2**63 - 1, 0]), odd),
        "country": st.one_of(st.sampled_from(["KP", "FR", "", "é", "K"]), odd),
        "channel": st.one_of(st.sampled_from(["web", "pos"]), odd),
        "mcc": st.one_of(st.sampled_from(["7995", "5411"]), odd),
        "card_id": st.text(max_size=3),
    },
)
feature_value = st.one_of(st.floats(), special, st.integers(-10, 10).map(float))


def rule_set(conditions: list[str]) -> RuleSet | None:
    compiled = []
    for i, cond in enumerate(conditions):
        try:
            program = cel.compile(cond)
        except Exception:
            return None
        rule = Rule(id=f"r{i}", condition=cond, action="review", reason=f"x{i}")
        compiled.append(CompiledRule(rule, program, rule.hit))
    refs = frozenset(FEATURES) | {"absent"}
    return RuleSet("test", compiled, LISTS, frozenset(TXN_TYPES), refs, txn_types=TXN_TYPES)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(bool_expr, min_size=1, max_size=4),
    st.lists(st.tuples(event, st.lists(feature_value, min_size=3, max_size=3)), max_size=12),
    st.booleans(),
)
def test_vectorised_equals_cel(
    conditions: list[str], rows: list[tuple[dict[str, Any], list[float]]], drop_feature: bool
) -> None:
    rs = rule_set(conditions)
    if rs is None:
        return
    events = [e for e, _ in rows]
    names = FEATURES[:-1] if drop_feature else FEATURES
    x = np.array([f[: len(names)] for _, f in rows], dtype=np.float64).reshape(
        len(rows), len(names)
    )
    got = rs.evaluate_batch(events, x, names)
    errors = dict(rs.evaluation_errors_by_rule)
    rs.evaluation_errors_by_rule.clear()
    want = rs.evaluate_batch_cel(events, x, names)
    assert got == want, (conditions, events)
    assert errors == {k: v for k, v in rs.evaluation_errors_by_rule.items() if v}, conditions


@settings(max_examples=300, deadline=None)
@given(bool_expr)
def test_most_generated_conditions_are_vectorised(cond: str) -> None:
    # Not an equality check: documents that the generator exercises the vectorised path.
    try:
        compile_vector(cond, TXN_TYPES, LISTS)
    except Unsupported:
        pass


def test_generator_covers_the_vectorised_path() -> None:
    supported = 0
    for cond in [
        "f.a > 3 && txn.amount < 5.0",
        "has(txn.country) && txn.country in lists.countries",
        "(txn.ts + 1 > 5) || !(f.b <= f.c)",
        "txn.country.startsWith('K') ? f.a / f.b > 1.0 : size(txn.channel) == 3",
        "txn.amount in [1, 2.5, 'x'] || double(txn.ts) in lists.nums",
    ]:
        compile_vector(cond, TXN_TYPES, LISTS)
        supported += 1
    assert supported == 5
