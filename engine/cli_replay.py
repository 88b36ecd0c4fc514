"""``riskstream replay`` and ``riskstream simulate --profile``: command functions for the CLI.

Registered on the app in :mod:`engine.cli` (composition root); ``replay`` and the stage packages
are imported inside the commands, so ``riskstream --help`` stays fast. Misuse raises
:class:`ReplayUsageError`, which the CLI's ``main`` prints as one line (exit code 2).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(stderr=True)


class ReplayUsageError(Exception):
    """A user-facing replay/simulate error: printed as one line, exit code 2."""


def replay(
    transactions: Annotated[
        Path, typer.Option(help="Transactions file (.parquet, .csv, .jsonl), sorted by ts.")
    ],
    to: Annotated[str, typer.Option(help="inprocess (the pipeline here) or kafka (the topics).")],
    events: Annotated[Path | None, typer.Option(help="Account events file.")] = None,
    labels: Annotated[
        Path | None, typer.Option(help="Labels file (event_id, ts, is_fraud).")
    ] = None,
    label_delay: Annotated[
        str | None,
        typer.Option(help="Generate labels from is_fraud, known this long after (7d, 36h)."),
    ] = None,
    speed: Annotated[
        str, typer.Option(help="max, or event time at N times real time (e.g. 60x).")
    ] = "max",
    from_: Annotated[
        str | None, typer.Option("--from", help="Start of event time (ISO-8601 or epoch ms).")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="End of event time, exclusive (ISO-8601 or epoch ms).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue after the last checkpoint.")] = False,
    out: Annotated[
        Path | None, typer.Option(help="In-process: write DIR/decisions.parquet (+ dead letters).")
    ] = None,
    max_defer: Annotated[
        str,
        typer.Option(help="How long a label/event may wait behind later transactions (0: strict)."),
    ] = "1h",
    batch_size: Annotated[int, typer.Option(min=1, help="Items per batch.")] = 1000,
    progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
    strict: Annotated[
        bool, typer.Option(help="Stop at the first bad row (else DIR/rejected.parquet).")
    ] = False,
) -> None:
    """Replay files in event-time order through the pipeline (in-process) or into Kafka."""
    from replay.merge import parse_duration, parse_time
    from replay.replay import ReplayOptions, parse_speed, run_replay

    for name, path in (("--transactions", transactions), ("--events", events),
                       ("--labels", labels)):  # fmt: skip
        if path is not None and not path.is_file():
            msg = f"{name}: no such file: {path}"
            raise ReplayUsageError(msg)
    try:
        opts = ReplayOptions(
            transactions=transactions,
            to=to,
            events=events,
            labels=labels,
            label_delay_ms=parse_duration(label_delay) if label_delay is not None else None,
            speed=parse_speed(speed),
            start_ms=parse_time(from_) if from_ is not None else None,
            until_ms=parse_time(until) if until is not None else None,
            resume=resume,
            out=out,
            batch_size=batch_size,
            max_defer_ms=parse_duration(max_defer),
            progress=progress,
            strict=strict,
        )
    except ValueError as exc:
        raise ReplayUsageError(str(exc)) from None
    from replay.quarantine import BadRowError

    try:
        result = run_replay(opts, console=console)
    except BadRowError:
        raise
    except ValueError as exc:  # e.g. a checkpoint for other inputs
        raise ReplayUsageError(str(exc)) from None
    dead = sum(result.dead.values())
    bad_rows = result.dead.get("transaction", 0)
    reasons = ", ".join(f"{k}={v:,}" for k, v in sorted(result.dead_reasons.items()))
    decided = ", ".join(f"{k}={v:,}" for k, v in sorted(result.decisions.items()))
    console.print(
        f"replayed {result.total_sent:,} items "
        f"({', '.join(f'{k}s {v:,}' for k, v in result.sent.items() if v)}) to {opts.to} "
        f"in {result.seconds:.1f}s: {result.events_per_second:,.0f} events/s"
        + (f"; decisions {decided}" if decided else "")
        + (f"; dead letters {dead:,} ({reasons})" if dead else "")
        + (
            f"; {bad_rows:,} transaction rows quarantined"
            + (f" in {opts.out / 'rejected.parquet'}" if opts.out else "")
            if bad_rows
            else ""
        )
        + (f"; {result.filtered:,} outside --from/--until" if result.filtered else "")
    )
    if result.out_of_order:
        console.print(f"[yellow]rows back in time (kept in file order): {result.out_of_order}")
    if result.decisions_path:
        console.print(f"decisions: {result.decisions_path}")


def simulate(
    out: Annotated[Path, typer.Option(help="Output file: .parquet, .csv or .jsonl.")],
    profile: Annotated[
        str, typer.Option(help="default (riskstream's world) or handbook (Le Borgne et al.).")
    ] = "default",
    days: Annotated[
        int | None, typer.Option(min=1, help="Days of history (default: 30, handbook 183).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same file).")] = 0,
    customers: Annotated[int | None, typer.Option(min=1, help="Default 5000.")] = None,
    merchants: Annotated[
        int | None, typer.Option(min=1, help="Merchants, or terminals (default 1000 / 10000).")
    ] = None,
    start: Annotated[
        str | None, typer.Option(help="First day, YYYY-MM-DD (2026-01-01 / 2018-04-01).")
    ] = None,
    drift: Annotated[
        bool,
        typer.Option(
            help="Shift the world from --drift-start: a merchant category's amounts x3, a new "
            "device population, a fraud wave (default profile only)."
        ),
    ] = False,
    drift_start: Annotated[
        float | None, typer.Option(min=0, help="Days after the start (default: half way).")
    ] = None,
    drift_days: Annotated[
        float | None, typer.Option(min=0, help="How long it lasts (default: to the end).")
    ] = None,
    drift_mcc: Annotated[str, typer.Option(help="Category whose amounts triple.")] = "5411",
) -> None:
    """Write a realistic, labelled transactions file."""
    if out.suffix not in (".parquet", ".csv", ".jsonl", ".json"):
        msg = f"--out must end in .parquet, .csv or .jsonl, not {out.suffix or out.name!r}"
        raise ReplayUsageError(msg)
    from replay.handbook import PROFILES, scenario_counts, simulate_profile
    from replay.sources import write_transactions

    if profile not in PROFILES:
        msg = f"--profile must be one of {', '.join(PROFILES)}, not {profile!r}"
        raise ReplayUsageError(msg)
    extra: dict[str, object] = {}
    if drift:
        from replay.simulate import DriftScenario

        if profile != "default":
            msg = "--drift needs --profile default"
            raise ReplayUsageError(msg)
        first = (days or 30) / 2 if drift_start is None else drift_start
        end = None if drift_days is None else first + drift_days
        extra["drift"] = DriftScenario(start_day=first, end_day=end, mcc=drift_mcc)
    t0 = time.perf_counter()
    try:
        df = simulate_profile(
            profile, days=days, seed=seed, start=start, n_customers=customers,
            n_merchants=merchants, **extra,
        )  # fmt: skip
    except ValueError as exc:
        raise ReplayUsageError(str(exc)) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    write_transactions(df, out)
    frauds = int(df["is_fraud"].sum())
    patterns = ", ".join(f"{k} {v:,}" for k, v in scenario_counts(df).items())
    console.print(
        f"wrote {len(df):,} transactions ({frauds:,} fraud, {frauds / max(1, len(df)):.2%}: "
        f"{patterns}) to {out} in {time.perf_counter() - t0:.1f}s"
    )
