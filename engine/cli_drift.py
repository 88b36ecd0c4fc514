"""``riskstream drift report``: drift statistics over a file or the workers' hourly log.

Composition-root code like :mod:`engine.cli`: ``replay`` is imported inside the command. Errors
are :class:`DriftCliError` or ``replay.drift_report.DriftReportError``, printed as one line.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    name="drift",
    help="Drift of features and score against a model's training reference.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err = Console(stderr=True)


class DriftCliError(Exception):
    """A user-facing error of the drift commands (one line, exit code 2)."""


@app.command()
def report(
    out: Annotated[Path, typer.Option(help="Directory for drift.json and drift.html.")],
    transactions: Annotated[
        Path | None,
        typer.Option(
            help="A feature log (riskstream replay --out DIR/decisions.parquet) or a "
            "transactions file (replayed in-process on a scratch Redis database)."
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            help="Live: the hourly counts the workers wrote to Redis from this time "
            "(ISO-8601 or epoch ms) on."
        ),
    ] = None,
    until: Annotated[str | None, typer.Option(help="With --since: end (exclusive).")] = None,
    model: Annotated[
        str | None, typer.Option(help="Model version (default: the champion).")
    ] = None,
    scratch_db: Annotated[
        int, typer.Option(min=0, max=15, help="Scratch Redis database for replaying a file.")
    ] = 15,
    strict: Annotated[
        bool, typer.Option(help="Stop at the first bad row (else OUT/rejected.parquet).")
    ] = False,
) -> None:
    """Write drift.json and a self-contained drift.html (histograms, PSI over time)."""
    from engine.settings import Settings
    from models.drift import HOUR_MS
    from replay import drift_report as dr
    from replay.merge import parse_time

    if (transactions is None) == (since is None):
        msg = "give exactly one of --transactions FILE or --since T"
        raise DriftCliError(msg)
    if transactions is not None and not transactions.exists():
        msg = f"no such file: {transactions}"
        raise DriftCliError(msg)
    try:
        since_ms = parse_time(since) if since is not None else None
        until_ms = parse_time(until) if until is not None else None
    except ValueError as exc:
        raise DriftCliError(str(exc)) from None
    settings = Settings()
    version, ref = dr.reference_for(settings, model)
    quarantined: dict[str, int] = {}
    with ExitStack() as stack:
        if transactions is not None:
            from engine.cli import redis_for_offline_work

            settings = settings.model_copy(update={"redis_url": redis_for_offline_work(stack)})
            log, quarantined = dr.feature_log(
                transactions, settings, version, scratch_db, strict=strict, out=out
            )
            ts = log["ts"].to_numpy()
            if not len(ts):
                msg = f"{transactions} has no transactions"
                raise DriftCliError(msg)
            period = dr.period_for(int(ts.max() - ts.min()))
            counts = dr.counts_of_log(ref, log, period)
            source = f"file {transactions}"
        else:
            import redis

            assert since_ms is not None  # noqa: S101 - checked above
            client = redis.Redis.from_url(settings.redis_url)
            period = HOUR_MS
            counts = dr.counts_since(client, ref, version, since_ms, until_ms)
            source = f"live hourly counts in {settings.redis_url} since {since}"
        result = dr.build_report(ref, counts, period, source)
    if transactions is not None:
        result["quarantined"] = quarantined  # rows of the file left out, by reason
    json_path, html_path = dr.write_report(result, out)
    top = ", ".join(
        f"{c['name']} {c['psi']:.3f}" for c in result["columns"][:3] if c["psi"] is not None
    )
    err.print(f"{result['transactions']:,} transactions; most drifted: {top or '—'}")
    err.print(f"wrote {json_path} and {html_path}")
    if quarantined:
        from replay.quarantine import REJECTED_FILE, quarantined_line

        err.print(quarantined_line(quarantined, "rows", out / REJECTED_FILE))
