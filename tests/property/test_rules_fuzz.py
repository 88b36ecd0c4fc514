"""Hostile input: garbage conditions and events never crash, hang or execute anything."""

from __future__ import annotations

import ast
import time
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rules import RuleSetError, load_rule_set

FEATURES = ["card_id_count_1h", "card_id_sum_1h"]
CANARY = Path("/tmp/riskstream-rules-fuzz-canary")
RULES_PKG = Path(__file__).resolve().parents[2] / "rules"

PIECES = [
    "txn", "f", "lists", ".", "amount", "country", "card_id_count_1h", "l", "(", ")", "[", "]",
    "{", "}", ",", ":", "?", "!", "-", "+", "*", "/", "%", "&&", "||", "==", "!=", "<", ">=",
    " in ", "has", "size", "exists", "map", "all", "x", "1", "2.5", "0", "'KP'", '"a"', "true",
    "null", "int", "double", "string", "matches", "'.*'", "__import__('os').system('touch "
    f"{CANARY}')", "eval", "exec", "open('/etc/passwd')", "1u", "0x7f", "b'x'", "\\", "'", "\n",
    "9223372036854775807", "-9223372036854775808", "1e308", "`", "@", "#", ";",
]  # fmt: skip
garbage = st.one_of(
    st.lists(st.sampled_from(PIECES), max_size=40).map("".join),
    st.text(max_size=120),
    st.builds(
        lambda n, s: s * n, st.integers(1, 1200), st.sampled_from(["(", "!", "-", "[1,", "a."])
    ),
)
values = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**80), 2**80), st.floats(), st.text(max_size=4),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)  # fmt: skip
events = st.lists(
    st.dictionaries(st.sampled_from(["amount", "country", "ts", "mcc", "zz"]), values, max_size=4),
    max_size=6,
)


def _yaml_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(garbage, events, st.floats())
def test_garbage_conditions_and_events(
    tmp_path_factory: Any, condition: str, evs: list[dict[str, Any]], value: float
) -> None:
    d = tmp_path_factory.mktemp("fuzz")
    (d / "r.yaml").write_text(
        "lists: {l: [KP, 1]}\nrules:\n"
        f"  - {{id: g, condition: {_yaml_quote(condition)}, action: tag, reason: r}}\n"
    )
    t0 = time.perf_counter()
    try:
        rs = load_rule_set(d, FEATURES)
    except RuleSetError as exc:
        assert all("\n" not in e for e in exc.errors)  # one line per problem
        assert time.perf_counter() - t0 < 5
        return
    out = rs.evaluate_batch(evs, np.full((len(evs), len(FEATURES)), value), FEATURES)
    assert len(out) == len(evs)
    assert rs.evaluate_batch_cel(evs, np.full((len(evs), 2), value), FEATURES) == out
    assert time.perf_counter() - t0 < 5
    assert not CANARY.exists()


def test_no_python_eval_or_exec_in_rules() -> None:
    banned = {"eval", "exec", "compile", "__import__"}
    for path in RULES_PKG.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in banned, f"{path}:{node.lineno}: {node.func.id}()"
