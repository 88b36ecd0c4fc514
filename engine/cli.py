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
from typing import Annotated, Any

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


def _add_subcommands() -> None:
    from engine import cli_drift, cli_models, cli_replay, cli_review
    from engine.cli_rules import app as rules_app

    app.add_typer(rules_app, name="rules")
    app.add_typer(cli_models.app, name="models")
    app.add_typer(cli_review.app, name="review")
    app.add_typer(cli_drift.app, name="drift")
    app.command("train")(cli_models.train)
    app.command("simulate")(cli_replay.simulate)
    app.command("replay")(cli_replay.replay)


_add_subcommands()


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
    import gc
    import importlib

    import faust
    import redis

    from engine.app import create_app
    from engine.build import build_service, wait_for_redis
    from engine.malloc import cap_arenas
    from engine.settings import Settings
    from engine.sinks import ensure_topics
    from engine.worker_runtime import Runtime

    settings = Settings()
    cap_arenas(settings.malloc_arenas)  # before librdkafka's threads start
    wait = settings.startup_wait_seconds
    ensure_topics(settings.kafka_bootstrap, settings.topics(), settings.topic_partitions, wait)
    client = redis.Redis.from_url(settings.redis_url)
    wait_for_redis(client, wait)
    service = build_service(settings, client=client)
    faust_app = create_app(settings)
    runtime = Runtime(settings, faust_app, service)
    importlib.import_module("agents").register(runtime)
    # What is loaded now (models, rules, Faust, numpy, River) lives as long as the worker: frozen,
    # the collector's full passes no longer walk it (they took 150-230 ms, inside a batch).
    gc.collect()
    gc.freeze()

    try:
        faust.Worker(faust_app, loglevel=loglevel.upper()).execute_from_commandline()
    finally:  # the online model keeps what it learned across restarts; drift counts reach Redis
        runtime.locked(service.checkpoint)
        if service.drift is not None:
            service.drift.flush()


@app.command()
def demo(
    days: Annotated[int, typer.Option(min=4, help="Days simulated.")] = 30,
    live_days: Annotated[int, typer.Option(min=1, help="Last days streamed through Kafka.")] = 2,
    seed: Annotated[int, typer.Option()] = 7,
    customers: Annotated[int, typer.Option(min=10)] = 3000,
    rate: Annotated[float, typer.Option(help="Events/s produced (0 = unpaced).")] = 2000,
    serve: Annotated[
        bool | None,
        typer.Option(help="Keep the review app running until Ctrl-C (default: when interactive)."),
    ] = None,
    screenshots: Annotated[
        Path | None, typer.Option(help="Save screenshots of the review pages here.")
    ] = None,
) -> None:
    """Simulate, train, run a worker and stream the last days through Kafka; print a summary
    and the review app's address with a demo analyst's sign-in."""
    from replay.demo import run_demo

    if serve is None:
        serve = sys.stdin.isatty() and sys.stdout.isatty()
    run_demo(days=days, live_days=live_days, seed=seed, customers=customers, rate=rate,
             serve=serve, screenshots=screenshots)  # fmt: skip


@app.command()
def bench(
    out: Annotated[Path, typer.Option(help="Where the figures go.")] = Path(".bench/results.json"),
    events: Annotated[int, typer.Option(min=1000, help="Events for the end-to-end run.")] = 60000,
    latency_seconds: Annotated[
        float, typer.Option(min=5, help="Length of the paced 5,000/s latency run.")
    ] = 60.0,
    knee: Annotated[
        str, typer.Option(help="Rates (events/s) of the knee steps, comma-separated.")
    ] = "1000,2000,3000,5000,10000,15000,20000,25000,30000",
    scaling: Annotated[bool, typer.Option(help="Also measure two workers in one group.")] = True,
) -> None:
    """Measure the pipeline in-process and through a worker, beside the Kafka and Faust
    ceilings; write a flat JSON of figures."""
    from replay.bench import run_bench

    try:
        rates = tuple(float(r) for r in knee.split(",") if r.strip())
    except ValueError:
        msg = f"--knee must be comma-separated numbers, not {knee!r}"
        raise CliError(msg) from None
    run_bench(out=out, e2e_events=events, latency_seconds=latency_seconds, knee_rates=rates,
              scaling=scaling)  # fmt: skip


@app.command("bench-broker")
def bench_broker(
    out: Annotated[Path, typer.Option(help="Where the rounds go (JSON).")] = Path(
        ".bench/broker-floor.json"
    ),
    rate: Annotated[float, typer.Option(min=1, help="Messages per second.")] = 5000.0,
    seconds: Annotated[float, typer.Option(min=1, help="Length of each round.")] = 12.0,
    rounds: Annotated[int, typer.Option(min=1, help="Rounds on the same topic.")] = 5,
    partitions: Annotated[
        int | None,
        typer.Option(min=1, help="Partitions of the topic [default: the worker's, "
                     "RISKSTREAM_TOPIC_PARTITIONS].", show_default=False),
    ] = None,
) -> None:
    """The broker's latency floor (producer to a bare consumer) and its cores, round after
    round on one growing topic: what no worker can go below. RISKSTREAM_KAFKA_BOOTSTRAP names a
    broker to measure; else the embedded Tansu is started."""
    import json
    from contextlib import ExitStack

    from rich.table import Table

    from engine.settings import Settings
    from engine.stack import EmbeddedStack
    from replay.broker_floor import broker_floor

    with ExitStack() as stack:
        bootstrap = os.environ.get("RISKSTREAM_KAFKA_BOOTSTRAP") or (
            stack.enter_context(EmbeddedStack()).kafka_bootstrap
        )
        topic = f"broker-floor-{int(time.time())}"
        parts = partitions or Settings().topic_partitions
        res = broker_floor(bootstrap, topic, rate=rate, seconds=seconds, rounds=rounds,
                           partitions=parts)  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rate": rate, "seconds": seconds, "partitions": parts,
                               "rounds": res}, indent=1))  # fmt: skip
    title = f"broker floor at {rate:,.0f}/s, {parts} partitions"
    table = Table("round", "messages before", "received", "p50 ms", "p99 ms", "p99.9 ms",
                  "broker cores", title=title)  # fmt: skip
    for r in res:
        table.add_row(str(r["round"]), f"{r['messages_before']:,}", f"{r['events']:,}",
                      f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}", f"{r['p999_ms']:.1f}",
                      f"{r['broker_cores']:.2f}")  # fmt: skip
    Console().print(table)
    console.print(f"rounds: {out}")


def redis_for_offline_work(stack: Any) -> str:
    """RISKSTREAM_REDIS_URL, else a Valkey of the embedded stack started for this command."""
    from engine.stack import EmbeddedStack

    url = os.environ.get("RISKSTREAM_REDIS_URL")
    if url:
        return url
    emb = stack.enter_context(EmbeddedStack(with_kafka=False))
    return str(emb.redis_url)


@app.command()
def backtest(
    transactions: Annotated[Path, typer.Option(help="Labelled transactions file.")],
    train_start: Annotated[str, typer.Option(help="ISO date/time or epoch ms.")],
    train_end: Annotated[str, typer.Option()],
    test_start: Annotated[str, typer.Option()],
    test_end: Annotated[str, typer.Option()],
    out: Annotated[Path, typer.Option(help="Directory for report.json/html, predictions.")],
    labels: Annotated[Path | None, typer.Option(help="Labels file (else --label-delay).")] = None,
    label_delay: Annotated[str, typer.Option(help="Labels known this long after the txn.")] = "7d",
    model: Annotated[str | None, typer.Option(help="Use this registered model.")] = None,
    rules: Annotated[Path | None, typer.Option(help="Rule directory to use.")] = None,
    strict: Annotated[
        bool, typer.Option(help="Stop at the first bad row (else OUT/rejected.parquet).")
    ] = False,
) -> None:
    """Train on a period and score a later one exactly as live would have; write a report."""
    from contextlib import ExitStack

    from engine.settings import Settings
    from replay.backtest import Period, run_backtest
    from replay.merge import parse_duration, parse_time
    from replay.quarantine import REJECTED_FILE, REJECTED_LABELS_FILE, quarantined_line

    for path in (transactions, labels, rules):
        if path is not None and not path.exists():
            msg = f"no such file or directory: {path}"
            raise CliError(msg)
    try:
        period = Period(*(parse_time(v) for v in (train_start, train_end, test_start, test_end)))
        delay_ms = parse_duration(label_delay)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if not period.train_start < period.train_end <= period.test_start < period.test_end:
        msg = "periods must satisfy train-start < train-end <= test-start < test-end"
        raise CliError(msg)
    with ExitStack() as stack:
        overrides: dict[str, Any] = {"redis_url": redis_for_offline_work(stack)}
        if rules is not None:
            overrides["rules_dir"] = rules
        settings = Settings(**overrides)
        report = run_backtest(
            settings, transactions, period, out, labels_path=labels,
            label_delay_ms=delay_ms, model_version=model, strict=strict,
        )  # fmt: skip
    keys = (
        "auc_roc", "average_precision", "card_precision_at_100", "oracle_card_precision_at_100",
        "n_test", "n_test_frauds", "events_per_second",
    )  # fmt: skip
    for k in keys:
        v = report[k]
        console.print(f"{k:32s} {v:,.4f}" if isinstance(v, float) else f"{k:32s} {v}")
    if report["n_quarantined"]:
        console.print(quarantined_line(report["quarantined"], "rows", out / REJECTED_FILE))
    if report["n_labels_quarantined"]:
        console.print(quarantined_line(report["labels_quarantined"], "label rows",
                                       out / REJECTED_LABELS_FILE))  # fmt: skip
    console.print(f"report: {out / 'report.html'}")


@app.command("rebuild-features")
def rebuild_features() -> None:
    """After a memory-only Redis lost its state, with the workers stopped: replay the committed
    part of the transactions topic into the store (see README, Faults)."""
    from replay.warmup import rebuild_from_topic

    n = rebuild_from_topic(os.environ)
    console.print(f"rebuilt the feature store from {n:,} committed transactions")


@app.command()
def faults(
    out: Annotated[Path, typer.Option(help="Where faults.json and the logs go.")] = Path(
        ".riskstream/faults"
    ),
    reduced: Annotated[bool, typer.Option(help="The CI form: fewer events and scenarios.")] = False,
    only: Annotated[str, typer.Option(help="Comma-separated scenario names.")] = "",
) -> None:
    """The fault suite against a real embedded stack; prints the fault table."""
    from rich.console import Console
    from rich.table import Table

    from replay.faults import run_suite

    wide = Console(width=max(console.width, 150))
    results = run_suite(out, reduced, [x for x in only.split(",") if x] or None, wide.print)
    table = Table("scenario", "events in", "decisions", "dead letters", "duplicates",
                  "differing", "lost", "features ok", "recovery s", "> 1 s", "ok")  # fmt: skip
    for r in results:
        dead = f"{r.dead_letters:,}" + (f" ({r.dead_innocent:,} not poison)" if r.dead_innocent
                                        else "")  # fmt: skip
        table.add_row(r.scenario, f"{r.events_in:,}", f"{r.decisions:,}", dead,
                      f"{r.duplicates:,}", f"{r.differing:,}",
                      f"{r.lost:,}" + (f" ({r.lost_with_broker:,} in the stopped broker)"
                                       if r.lost_with_broker else ""),
                      f"{r.features_checked - r.features_mismatched:,}/{r.features_checked:,}",
                      ", ".join(f"{x:.1f}" for x in r.recovery_seconds) or "-",
                      f"{r.latency_over_1s:,}", str(r.ok))  # fmt: skip
    wide.print(table)
    for r in results:
        if r.notes:
            wide.print(f"{r.scenario}: {r.notes}")
    if not all(r.ok for r in results):
        raise typer.Exit(1)


@app.command()
def fuzz(
    messages: Annotated[int, typer.Option(min=1, help="How many hostile messages.")] = 1_000_000,
    out: Annotated[Path, typer.Option(help="Where fuzz.json and the logs go.")] = Path(
        ".riskstream/fuzz"
    ),
    seed: Annotated[int, typer.Option(help="Generator seed.")] = 0,
) -> None:
    """Malformed and hostile messages through a real worker: crashes, accounting, PAN scan, RSS."""
    from replay.fuzz import run_fuzz

    res = run_fuzz(messages, out, seed, log=console.print)
    for k, v in res.__dict__.items():
        console.print(f"{k:22s} {v}")
    console.print(f"{'ok':22s} {res.ok}")
    if not res.ok:
        raise typer.Exit(1)


@app.command("benchmark-handbook")
def benchmark_handbook(
    seeds: Annotated[str, typer.Option(help="Comma-separated simulator seeds.")] = "0,1,2",
    out: Annotated[Path, typer.Option(help="Where files and reports go.")] = Path(
        ".bench/handbook"
    ),
) -> None:
    """The handbook benchmark: simulate, backtest with its protocol, compare to its baselines."""
    from contextlib import ExitStack

    from replay.handbook_benchmark import run_handbook_benchmark

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        msg = f"--seeds must be comma-separated integers, not {seeds!r}"
        raise CliError(msg) from None
    if not seed_list:
        msg = "--seeds is empty"
        raise CliError(msg)
    with ExitStack() as stack:
        run_handbook_benchmark(seed_list, out, redis_for_offline_work(stack))


def main() -> None:
    """Entry point: one clear line for every user error, never a traceback."""
    logging.basicConfig(
        level=os.environ.get("RISKSTREAM_LOG_LEVEL", "WARNING"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        code = app(standalone_mode=False)  # a command's typer.Exit(n) comes back as n
        if isinstance(code, int) and code:
            sys.exit(code)
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
        errors = getattr(exc, "errors", None)
        if name == "ValidationError" and callable(errors):  # settings: say which and why
            what = "; ".join(
                ".".join(map(str, e.get("loc", ()))) + (": " if e.get("loc") else "")
                + str(e.get("msg", "")).removeprefix("Value error, ")
                for e in errors()
            )  # fmt: skip
            print(f"riskstream: error: settings: {what}", file=sys.stderr)
            sys.exit(2)
        ours = name.endswith(("Error", "Exception")) and type(exc).__module__.split(".")[0] in (
            *_PACKAGES, "pydantic", "pydantic_core",
        )  # fmt: skip
        # a ValueError our own code raised is our message about the input (a debug log level
        # still shows its traceback)
        debug = os.environ.get("RISKSTREAM_LOG_LEVEL", "").upper() == "DEBUG"
        ours = ours or (isinstance(exc, ValueError) and _raised_in(exc, _PACKAGES) and not debug)
        if ours:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else name
            print(f"riskstream: error: {first}", file=sys.stderr)
            sys.exit(2)
        raise


_PACKAGES = ("engine", "features", "rules", "models", "replay", "agents")


def _raised_in(exc: BaseException, packages: tuple[str, ...]) -> bool:
    """Whether the innermost frame of ``exc``'s traceback is in one of ``packages``."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return str(tb.tb_frame.f_globals.get("__name__", "")).split(".")[0] in packages


if __name__ == "__main__":
    main()
