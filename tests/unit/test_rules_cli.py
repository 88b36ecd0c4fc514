"""``riskstream rules check`` and ``riskstream rules test``."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from engine.cli_rules import app

RULES_DIR = Path(__file__).resolve().parents[2] / "rules"
runner = CliRunner()


def test_check_default_set() -> None:
    res = runner.invoke(app, ["check", str(RULES_DIR)])
    assert res.exit_code == 0, res.output
    assert "ok" in res.output and "vectorised" in res.output


def test_check_reports_one_line_per_error(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        "rules:\n"
        "  - {id: a, condition: 'txn.amount >', action: review, reason: r}\n"
        "  - {id: b, condition: 'f.nope > 1', action: review, reason: r}\n"
        "  - {id: b, condition: 'true', action: review, reason: r}\n"
        "  - {id: c, condition: 'txn.amount + 1 > 2', action: review, reason: r}\n"
    )
    res = runner.invoke(app, ["check", str(tmp_path)])
    assert res.exit_code == 1
    lines = [x for x in res.stdout.splitlines() if x.startswith(str(tmp_path))]
    assert len(lines) == 4, res.output
    assert "rule 'a': condition 1:" in lines[0] and "syntax error" in lines[0]
    assert "rule 'b': condition 1:3: unknown feature 'f.nope'" in lines[1]
    assert "rule 'b': duplicate id" in lines[2]
    assert "rule 'c': type check" in lines[3]


def test_fixture_cases_pass_and_fail(tmp_path: Path) -> None:
    res = runner.invoke(app, ["test", str(RULES_DIR), "--cases", str(RULES_DIR / "cases")])
    assert res.exit_code == 0, res.output
    assert "6 passed, 0 failed" in res.output
    cases = tmp_path / "c.yaml"
    cases.write_text(
        "cases:\n"
        "  - name: wrong\n"
        "    event: {amount: 1.0}\n"
        "    features: {card_id_count_1h: 9}\n"
        "    expect: {action: block, reason: card_testing}\n"
        "  - name: right\n"
        "    event: {amount: 9000.0}\n"
        "    expect: {action: review, reason: large_amount, rules: [large_amount]}\n"
    )
    res = runner.invoke(app, ["test", str(RULES_DIR), "--cases", str(cases)])
    assert res.exit_code == 1
    assert (
        f"{cases}:2: case 'wrong': FAIL: expected action block, got review "
        "(fired: card_testing_burst)" in res.stdout
    )
    assert "1 passed, 1 failed" in res.output
