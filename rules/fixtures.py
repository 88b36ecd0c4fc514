"""Fixture cases for a rule set: an event, its features, the expected outcome.

A fixture file (YAML) holds ``cases:``::

    cases:
      - name: tiny authorisations burst
        event: {amount: 1.0, country: FR, channel: ecom}
        features: {card_id_count_1h: 9}       # features not given are 0.0
        expect: {action: review, reason: card_testing}
      - name: ordinary purchase
        event: {amount: 25.0, country: FR}
        expect: {action: none}                # no rule fires
      - name: exact rule list
        event: {amount: 7000.0, country: KP}
        expect: {action: review, rules: [large_amount, high_risk_country]}

``action`` is what the rules decide on their own: the first block/allow hit, else ``review`` if a
review rule fired, else ``tag`` if a tag rule fired, else ``none``. ``reason`` (optional) must be
the reason code of the rule that gave that action; ``rules`` (optional) is the exact list of rule
ids that fired, in evaluation order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rules.ruleset import RuleHit, RuleSet

OUTCOMES = ("block", "allow", "review", "tag", "none")
MAX_FIXTURE_BYTES = 4 << 20


@dataclass(frozen=True)
class CaseResult:
    file: str
    line: int
    name: str
    ok: bool
    message: str = ""

    def __str__(self) -> str:
        status = "ok" if self.ok else "FAIL"
        tail = f": {self.message}" if self.message else ""
        return f"{self.file}:{self.line}: case {self.name!r}: {status}{tail}"


def outcome(hits: Sequence[RuleHit]) -> tuple[str, RuleHit | None]:
    """The action the rules decide alone, and the hit that decided it."""
    for h in hits:
        if h.action in ("block", "allow"):
            return h.action, h
    for action in ("review", "tag"):
        for h in hits:
            if h.action == action:
                return action, h
    return "none", None


def fixture_files(path: str | Path) -> list[Path]:
    p = Path(path)
    if p.is_dir():
        return sorted(q for q in p.rglob("*") if q.suffix in (".yaml", ".yml") and q.is_file())
    return [p]


def _cases(path: Path) -> tuple[list[tuple[int, Any]], str | None]:
    data = path.read_bytes()
    if len(data) > MAX_FIXTURE_BYTES:
        return [], f"{path}: {len(data)} bytes (limit {MAX_FIXTURE_BYTES})"
    try:
        node = yaml.compose(data.decode("utf-8"), Loader=yaml.SafeLoader)
        doc = yaml.safe_load(data.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return [], f"{path}: cannot read fixtures: {first}"
    if not isinstance(doc, dict) or not isinstance(doc.get("cases"), list):
        return [], f"{path}: expected a mapping with 'cases:' (a list)"
    lines: list[int] = []
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if k.value == "cases" and isinstance(v, yaml.SequenceNode):
                lines = [item.start_mark.line + 1 for item in v.value]
    cases = doc["cases"]
    return [(lines[i] if i < len(lines) else 0, c) for i, c in enumerate(cases)], None


def run_case(rs: RuleSet, known_features: Sequence[str], case: Any) -> tuple[str, str]:
    """(name, failure message or "") for one case."""
    if not isinstance(case, dict):
        return "?", "a case must be a mapping with event, features and expect"
    name = str(case.get("name", "?"))
    unknown = set(case) - {"name", "event", "features", "expect"}
    if unknown:
        return name, f"unknown key {sorted(unknown)[0]!r} (name, event, features, expect)"
    event, feats, expect = case.get("event") or {}, case.get("features") or {}, case.get("expect")
    if not isinstance(event, dict) or not isinstance(feats, dict) or not isinstance(expect, dict):
        return name, "event and features must be mappings and expect is required"
    bad = sorted(str(k) for k in feats if k not in known_features)
    if bad:
        return name, f"unknown feature {bad[0]!r}"
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in feats.values()):
        return name, "feature values must be numbers"
    want_action = expect.get("action")
    if want_action not in OUTCOMES or set(expect) - {"action", "reason", "rules"}:
        return (
            name,
            f"expect needs action: one of {', '.join(OUTCOMES)} (and optional reason, rules)",
        )
    values = dict.fromkeys(known_features, 0.0)
    values.update({str(k): float(v) for k, v in feats.items()})
    errors_before = rs.evaluation_errors
    hits = rs.evaluate(event, values)
    errored = rs.evaluation_errors - errors_before
    action, decider = outcome(hits)
    fired = [h.rule_id for h in hits]
    problems: list[str] = []
    if action != want_action:
        problems.append(f"expected action {want_action}, got {action}")
    want_reason = expect.get("reason")
    if want_reason is not None and (decider is None or decider.reason != want_reason):
        got = decider.reason if decider else "none"
        problems.append(f"expected reason {want_reason}, got {got}")
    want_rules = expect.get("rules")
    if want_rules is not None and list(want_rules) != fired:
        problems.append(f"expected rules {list(want_rules)}, got {fired}")
    if not problems:
        return name, ""
    detail = f" (fired: {', '.join(fired) or 'none'}"
    detail += f"; {errored} rule evaluation error(s), e.g. a missing field)" if errored else ")"
    return name, "; ".join(problems) + detail


def run_fixtures(rs: RuleSet, known_features: Sequence[str], path: str | Path) -> list[CaseResult]:
    """Every case of every fixture file under ``path`` (a file or a directory)."""
    results: list[CaseResult] = []
    files = fixture_files(path)
    if not files:
        return [CaseResult(str(path), 0, "-", False, "no fixture files (*.yaml)")]
    for f in files:
        cases, error = _cases(f)
        if error:
            results.append(CaseResult(str(f), 0, "-", False, error.split(": ", 1)[-1]))
            continue
        for line, case in cases:
            name, message = run_case(rs, known_features, case)
            results.append(CaseResult(str(f), line, name, not message, message))
    return results
