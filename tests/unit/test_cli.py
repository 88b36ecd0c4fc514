"""CLI misuse prints one clear line and exits 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["bogus"], "No such command"),
        (["simulate"], "--out"),
        (["simulate", "--out", "x.txt"], ".parquet"),
        (["simulate", "--out", "x.csv", "--days", "0"], "--days"),
        (["simulate", "--out", "x.csv", "--days", "many"], "--days"),
    ],
)
def test_misuse_is_one_line(args: list[str], needle: str) -> None:
    res = run(*args)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("riskstream: error:")
    assert needle in lines[0]
    assert "Traceback" not in res.stderr


def test_help_lists_the_commands() -> None:
    res = run("--help")
    assert res.returncode == 0
    for cmd in ("up", "worker", "simulate", "demo", "bench"):
        assert cmd in res.stdout


def test_rules_check_exits_non_zero_on_an_invalid_directory(tmp_path: object) -> None:
    res = run("rules", "check", "/nonexistent-rules-dir")
    assert res.returncode == 1
    assert "Traceback" not in res.stderr


def test_a_value_error_of_our_own_code_is_one_line_not_a_traceback() -> None:
    from engine.cli import _raised_in
    from replay.merge import parse_duration

    with pytest.raises(ValueError) as ours:
        parse_duration("soon")
    assert _raised_in(ours.value, ("replay",))
    with pytest.raises(ValueError) as theirs:
        int("soon")
    assert not _raised_in(theirs.value, ("replay", "engine"))
