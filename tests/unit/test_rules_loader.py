"""Loading, validation and versioning of rule files."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rules import RuleSetError, load_rule_set, rule_set_version
from rules.loader import MAX_CONDITION_CHARS, MAX_NESTING
from tests.rules_support import FEATURES, RULES_DIR

GOOD = """\
lists:
  hr: [NG, KP]
rules:
  - id: ok_rule
    condition: txn.amount > 1
    action: review
    reason: r
"""


def write(d: Path, name: str, text: str) -> Path:
    p = d / name
    p.write_text(textwrap.dedent(text))
    return p


def rule_yaml(rule_id: str, condition: str, action: str = "review", extra: str = "") -> str:
    return (
        f"rules:\n  - id: {rule_id}\n    condition: {condition}\n"
        f"    action: {action}\n    reason: because\n{extra}"
    )


def load_error(d: Path) -> RuleSetError:
    with pytest.raises(RuleSetError) as info:
        load_rule_set(d, FEATURES)
    return info.value


# -- the default set ---------------------------------------------------------------------------


def test_default_set_loads() -> None:
    rs = load_rule_set(RULES_DIR, FEATURES)
    assert len(rs) >= 4
    assert len(rs.version) == 12
    int(rs.version, 16)
    assert all(r.enabled for r in rs.rules)
    assert {r.action for r in rs.rules} <= {"block", "review", "allow", "tag"}
    assert "high_risk_countries" in rs.lists
    priorities = [r.priority for r in rs.rules]
    assert priorities == sorted(priorities)


def test_rules_package_does_not_import_engine() -> None:
    code = (
        "import sys, rules; bad = [m for m in sys.modules "
        "if m.split('.')[0] in ('engine', 'agents', 'faust')]; print(bad); assert not bad"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


# -- validation errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (rule_yaml("syn", "txn.amount > && 3"), ["rule 'syn'", "condition 1:14", "syntax error"]),
        (
            rule_yaml("unk_feat", "f.card_count_1h > 2"),
            ["rule 'unk_feat'", "unknown feature 'f.card_count_1h'", "card_id_count_1h"],
        ),
        (
            rule_yaml("bad_act", "txn.amount > 2", action="deny"),
            ["rule 'bad_act'", "action 'deny' is not one of block, review, allow, tag"],
        ),
        (
            "rules:\n  - id: no_cond\n    action: review\n    reason: r\n",
            ["a.yaml:2", "rule 'no_cond'", "missing required key 'condition'"],
        ),
        (
            rule_yaml("unk_field", "txn.amout > 2"),
            ["rule 'unk_field'", "unknown transaction field 'txn.amout'", "'amount'"],
        ),
        (rule_yaml("unk_list", "txn.country in lists.nope"), ["unknown list 'lists.nope'"]),
        (rule_yaml("unk_ident", "amount > 2"), ["condition 1:1: unknown identifier 'amount'"]),
        (rule_yaml("nonbool", "txn.amount"), ["rule 'nonbool'", "must evaluate to a bool"]),
        (rule_yaml("typ", "txn.amount + 1 > 2"), ["rule 'typ'", "type check", "TypeError"]),
        (
            rule_yaml("long", "true" + " && true" * (MAX_CONDITION_CHARS // 8)),
            ["rule 'long'", f"limit {MAX_CONDITION_CHARS}"],
        ),
        (
            rule_yaml("deep", "(" * (MAX_NESTING + 1) + "true" + ")" * (MAX_NESTING + 1)),
            ["rule 'deep'", f"nests {MAX_NESTING + 1} brackets deep"],
        ),
        (
            rule_yaml("typo", "txn.amount > 1", extra="    enabeld: false\n"),
            ["unknown key 'enabeld'"],
        ),
        (
            rule_yaml("prio", "txn.amount > 1", extra="    priority: high\n"),
            ["rule 'prio'", "priority must be an integer"],
        ),
        (
            rule_yaml(
                "ex",
                "txn.amount > 2",
                extra="    examples:\n      - {txn: {amount: 1.0}, fires: true}\n",
            ),
            ["rule 'ex'", "example 1: expected fires=True"],
        ),
        ("rules:\n  - id: x\n    condition: [1\n", ["a.yaml:4:1: YAML error"]),
        ("rules: {}\n", ["'rules' must be a list"]),
        ("rulez: []\n", ["unknown top-level key 'rulez'"]),
    ],
)
def test_validation_errors_name_file_rule_and_position(
    tmp_path: Path, text: str, expected: list[str]
) -> None:
    write(tmp_path, "a.yaml", text)
    err = load_error(tmp_path)
    assert len(err.errors) == 1, err.errors
    line = err.errors[0]
    assert "\n" not in line
    assert str(tmp_path / "a.yaml") in line
    for part in expected:
        assert part in line, line


def test_duplicate_ids_across_files(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", rule_yaml("same", "txn.amount > 1"))
    write(tmp_path, "b.yaml", rule_yaml("same", "txn.amount > 2"))
    [line] = load_error(tmp_path).errors
    assert "b.yaml:2: rule 'same': duplicate id (first at " in line
    assert "a.yaml:2" in line


def test_condition_error_position_in_block_scalar(tmp_path: Path) -> None:
    write(
        tmp_path,
        "a.yaml",
        """\
        rules:
          - id: multi
            condition: |
              txn.amount > 3 &&
                f.nope > 2
            action: review
            reason: r
        """,
    )
    [line] = load_error(tmp_path).errors
    assert line.startswith(f"{tmp_path / 'a.yaml'}:5: rule 'multi': condition 2:5: unknown feature")


def test_all_errors_are_collected(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", rule_yaml("one", "f.x > 1") + "  - id: two\n    action: nope\n")
    write(tmp_path, "b.yaml", "rules: [\n")
    err = load_error(tmp_path)
    # one: unknown feature; two: missing condition, missing reason, bad action; b.yaml: YAML
    assert len(err.errors) == 5
    message = str(err)
    assert message.splitlines()[0] == "rule set invalid (5 errors):"
    assert message.splitlines()[1:] == err.errors


def test_strings_and_comments_are_not_references(tmp_path: Path) -> None:
    cond = "\"'f.nope' == txn.channel || txn.channel == 'txn.nope' // f.nope\""
    write(tmp_path, "a.yaml", rule_yaml("strs", cond))
    rs = load_rule_set(tmp_path, FEATURES)
    assert [r.id for r in rs.rules] == ["strs"]


def test_macro_variables_are_not_unknown_identifiers(tmp_path: Path) -> None:
    cond = "lists.hr.exists(c, c == txn.country)"
    write(tmp_path, "a.yaml", rule_yaml("macro", f'"{cond}"') + "lists:\n  hr: [NG]\n")
    rs = load_rule_set(tmp_path, FEATURES)
    assert rs.evaluate({"country": "NG"}, {}) != []


def test_yaml_scalars_that_are_not_strings_say_so(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "rules:\n  - {id: off, condition: true, action: tag, reason: r}\n")
    errors = load_error(tmp_path).errors
    assert any("id must be a string" in e and "got bool False" in e for e in errors), errors
    assert any("condition must be a string" in e and "quote it" in e for e in errors), errors


def test_missing_or_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(RuleSetError, match="not a directory"):
        load_rule_set(tmp_path / "nope", FEATURES)
    with pytest.raises(RuleSetError, match="no rule files"):
        load_rule_set(tmp_path, FEATURES)


def test_duplicate_and_bad_lists(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "lists:\n  hr: [NG]\n  bad: [{a: 1}]\n")
    write(tmp_path, "b.yaml", "lists:\n  hr: [KP]\n")
    errors = load_error(tmp_path).errors
    assert any("list 'bad': values must be strings or numbers" in e for e in errors)
    assert any("b.yaml:2: list 'hr': already defined at" in e for e in errors)


# -- versioning --------------------------------------------------------------------------------


def test_version_is_stable_and_tracks_content(tmp_path: Path) -> None:
    d1, d2 = tmp_path / "one", tmp_path / "two"
    shutil.copytree(RULES_DIR, d1, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    shutil.copytree(d1, d2)
    v = load_rule_set(d1, FEATURES).version
    assert load_rule_set(d1, FEATURES).version == v
    assert load_rule_set(d2, FEATURES).version == v  # location does not matter
    assert rule_set_version(d1) == v

    f = d2 / "default.yaml"
    f.write_text(f.read_text().replace("txn.amount > 5000", "txn.amount > 5001"))
    v2 = load_rule_set(d2, FEATURES).version
    assert v2 != v
    assert rule_set_version(d2) == v2

    write(d1, "extra.yaml", GOOD)
    v3 = load_rule_set(d1, FEATURES).version
    assert v3 not in (v, v2)
    (d1 / "extra.yaml").unlink()
    assert load_rule_set(d1, FEATURES).version == v


def test_non_yaml_files_are_ignored(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", GOOD)
    v = load_rule_set(tmp_path, FEATURES).version
    write(tmp_path, "notes.txt", "hello")
    assert load_rule_set(tmp_path, FEATURES).version == v
