"""``riskstream rules ...``: check, test and backtest rule sets (part of the CLI composition root).

Mounted by :mod:`engine.cli` with ``app.add_typer(rules_app, name="rules")``. Commands import the
stage packages lazily. ``check`` and ``test`` print one line per problem and exit 1 when the set
is invalid or a case fails.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    name="rules",
    help="Validate, test and backtest rule sets.",
    no_args_is_help=True,
    add_completion=False,
)
out = Console()
err = Console(stderr=True)


def _feature_names() -> list[str]:
    from features.spec import DEFAULT_SPEC

    return [f.name for f in DEFAULT_SPEC]


def _default_rules_dir() -> Path:
    from engine.settings import Settings

    return Settings().rules_dir


@app.command()
def check(
    directory: Annotated[Path, typer.Argument(help="Rule directory (*.yaml, lists/*.txt).")],
) -> None:
    """Validate a rule directory: one line per error, exit 1 if any."""
    from rules.loader import RuleSetError, load_rule_set

    try:
        rs = load_rule_set(directory, _feature_names())
    except RuleSetError as exc:
        for line in exc.errors:
            print(line)
        err.print(f"[red]{len(exc.errors)} error(s)[/] in {directory}")
        raise typer.Exit(1) from None
    active = sum(1 for r in rs.rules if r.enabled)
    vector = active - len(rs.per_event_rules)
    out.print(
        f"[green]ok[/] {directory}: version {rs.version}, {len(rs)} rules ({active} enabled, "
        f"{vector} vectorised), {len(rs.lists)} lists"
    )
    for rid, why in sorted(rs.per_event_rules.items()):
        out.print(f"  note: rule {rid!r} is evaluated per event by CEL ({why})")


@app.command("test")
def test_cases(
    directory: Annotated[Path, typer.Argument(help="Rule directory.")],
    cases: Annotated[Path, typer.Option("--cases", help="Fixture YAML file or directory.")],
) -> None:
    """Run fixture cases (event, features, expected action and reason) against a rule set."""
    from rules.fixtures import run_fixtures
    from rules.loader import RuleSetError, load_rule_set

    names = _feature_names()
    try:
        rs = load_rule_set(directory, names)
    except RuleSetError as exc:
        for line in exc.errors:
            print(line)
        raise typer.Exit(1) from None
    if not cases.exists():
        print(f"{cases}: no such file or directory")
        raise typer.Exit(1)
    results = run_fixtures(rs, names, cases)
    failed = [r for r in results if not r.ok]
    for r in failed:
        print(str(r))
    passed = len(results) - len(failed)
    colour = "red" if failed else "green"
    out.print(f"[{colour}]{passed} passed, {len(failed)} failed[/] (rule set {rs.version})")
    if failed:
        raise typer.Exit(1)


@app.command()
def backtest(
    transactions: Annotated[Path, typer.Option(help="Labelled transactions file.")],
    labels: Annotated[
        Path | None, typer.Option(help="Labels file (event_id, is_fraud[, ts]).")
    ] = None,
    label_delay: Annotated[
        str | None,
        typer.Option(help="Label delay, e.g. 7d, 36h (bare number: ms)."),
    ] = None,
    rules: Annotated[
        Path | None, typer.Option(help="Rule set to test (default: settings).")
    ] = None,
    against: Annotated[Path | None, typer.Option(help="Rule set to compare with.")] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the report as JSON.")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 1000,
    strict: Annotated[
        bool, typer.Option(help="Stop at the first bad row (else DIR/rejected.parquet).")
    ] = False,
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for rejected.parquet.")] = Path(
        ".riskstream/rules-backtest"
    ),
) -> None:
    """Replay a labelled file through the pipeline; per-rule hits, precision, recall, diff."""
    from replay.merge import parse_duration
    from replay.quarantine import REJECTED_FILE, REJECTED_LABELS_FILE, quarantined_line
    from replay.rules_backtest import render, run_backtest

    if labels is not None and label_delay is not None:
        print("riskstream: error: give --labels or --label-delay, not both")
        raise typer.Exit(2)
    delay = parse_duration(label_delay) if label_delay else None
    report = run_backtest(
        transactions,
        rules or _default_rules_dir(),
        against_dir=against,
        labels=labels,
        label_delay_ms=delay,
        redis_url=os.environ.get("RISKSTREAM_REDIS_URL") or None,
        batch_size=batch_size,
        progress=err.is_terminal,
        strict=strict,
        out=out_dir,
    )
    out.print(render(report))
    if report.quarantined:
        out.print(quarantined_line(report.quarantined, "rows", out_dir / REJECTED_FILE))
    if report.labels_quarantined:
        out.print(quarantined_line(report.labels_quarantined, "label rows",
                                   out_dir / REJECTED_LABELS_FILE))  # fmt: skip
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        out.print(f"JSON report: {json_out}")
