"""The ``riskstream`` command line.

This is the composition root: commands import the stage packages (and ``replay``) lazily, so
``riskstream --help`` stays fast and the library graph keeps pointing one way. Misuse prints one
line on stderr and exits 2; it never prints a traceback.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from typer._click.exceptions import ClickException  # typer >= 0.20 vendors click
from typer.exceptions import Abort

app = typer.Typer(
    name="riskstream",
    help="Streaming real-time transaction scoring.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


@app.command()
def up(
    partitions: Annotated[int, typer.Option(help="Partitions per topic.")] = 4,
) -> None:
    """Start the embedded stack (Tansu + Valkey) and print the settings to connect."""
    from engine.settings import Settings
    from engine.sinks import ensure_topics
    from engine.stack import EmbeddedStack

    stack = EmbeddedStack().start()
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        s = Settings()
        ensure_topics(stack.kafka_bootstrap, s.topics(), partitions)
        for k, v in stack.env().items():
            print(f"export {k}={v}", flush=True)
        console.print("[green]embedded stack up[/]; Ctrl-C or SIGTERM stops it")
        while not stopping:
            time.sleep(0.2)
    finally:
        stack.stop()
        console.print("embedded stack stopped")


@app.command()
def worker(
    loglevel: Annotated[str, typer.Option(help="Log level.")] = "info",
) -> None:
    """Run the Faust worker: score transactions, learn labels, serve /metrics."""
    import importlib

    import faust

    from engine.app import create_app
    from engine.build import build_service
    from engine.settings import Settings
    from engine.sinks import ensure_topics
    from engine.worker_runtime import Runtime

    settings = Settings()
    ensure_topics(settings.kafka_bootstrap, settings.topics(), settings.topic_partitions)
    service = build_service(settings)
    faust_app = create_app(settings)
    runtime = Runtime(settings, faust_app, service)
    importlib.import_module("agents").register(runtime)

    try:
        faust.Worker(faust_app, loglevel=loglevel.upper()).execute_from_commandline()
    finally:  # the online model keeps what it learned across restarts
        runtime.locked(service.checkpoint)


@app.command()
def simulate(
    out: Annotated[Path, typer.Option(help="Output file: .parquet, .csv or .jsonl.")],
    days: Annotated[int, typer.Option(min=1, help="Days of history.")] = 30,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same file).")] = 0,
    customers: Annotated[int, typer.Option(min=1)] = 5000,
    merchants: Annotated[int, typer.Option(min=1)] = 1000,
    start: Annotated[str, typer.Option(help="First day, YYYY-MM-DD.")] = "2026-01-01",
) -> None:
    """Write a realistic, labelled transactions file."""
    if out.suffix not in (".parquet", ".csv", ".jsonl", ".json"):
        msg = f"--out must end in .parquet, .csv or .jsonl, not {out.suffix or out.name!r}"
        raise CliError(msg)
    from replay.simulate import simulate as run
    from replay.sources import write_transactions

    t0 = time.perf_counter()
    df = run(days=days, seed=seed, start=start, n_customers=customers, n_merchants=merchants)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_transactions(df, out)
    frauds = int(df["is_fraud"].sum())
    console.print(
        f"wrote {len(df):,} transactions ({frauds:,} fraud, {frauds / max(1, len(df)):.2%}) "
        f"to {out} in {time.perf_counter() - t0:.1f}s"
    )


@app.command()
def demo(
    days: Annotated[int, typer.Option(min=4, help="Days simulated.")] = 30,
    live_days: Annotated[int, typer.Option(min=1, help="Last days streamed through Kafka.")] = 2,
    seed: Annotated[int, typer.Option()] = 7,
    customers: Annotated[int, typer.Option(min=10)] = 3000,
    rate: Annotated[float, typer.Option(help="Events/s produced (0 = unpaced).")] = 2000,
) -> None:
    """Simulate, train, run a worker and stream the last days through Kafka; print a summary."""
    from replay.demo import run_demo

    run_demo(days=days, live_days=live_days, seed=seed, customers=customers, rate=rate)


@app.command()
def bench(
    out: Annotated[Path, typer.Option(help="Where the figures go.")] = Path(".bench/results.json"),
    events: Annotated[int, typer.Option(min=1000, help="Events for the end-to-end run.")] = 30000,
) -> None:
    """Measure the pipeline in-process and through a worker; write a flat JSON of figures."""
    from replay.bench import run_bench

    run_bench(out=out, e2e_events=events)


def main() -> None:
    """Entry point: one clear line for every user error, never a traceback."""
    logging.basicConfig(
        level=os.environ.get("RISKSTREAM_LOG_LEVEL", "WARNING"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        app(standalone_mode=False)
    except Abort:
        sys.exit(130)
    except ClickException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            sys.exit(0)
        print(f"riskstream: error: {exc.format_message()}", file=sys.stderr)
        sys.exit(2)
    except CliError as exc:
        print(f"riskstream: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        print(f"riskstream: error: {exc.strerror}: {exc.filename}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:
        name = type(exc).__name__
        if name.endswith(("Error", "Exception")) and type(exc).__module__.split(".")[0] in (
            "engine", "features", "rules", "models", "replay", "pydantic", "pydantic_core",
        ):  # fmt: skip
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else name
            print(f"riskstream: error: {first}", file=sys.stderr)
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
