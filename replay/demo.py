"""``make demo``: the whole path on the embedded stack, with a summary a payment team can read.

1. start Tansu + Valkey (or use RISKSTREAM_KAFKA_BOOTSTRAP / RISKSTREAM_REDIS_URL),
2. simulate a month of labelled transactions,
3. replay all but the last days in-process through the pipeline (this warms the Redis features
   exactly as live would) and train LightGBM on the features the pipeline produced,
4. register + promote the model, teach the online model the labels known by then,
5. start a worker, stream the last days through Kafka (a few malformed messages included, labels
   arriving a day of event time later), and read back every decision,
6. print events scored, decisions by kind, queue depth, dead letters, throughput, latency, AP,
7. start the review app on the demo's cases and print its address and a demo analyst's sign-in.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import redis
from rich.console import Console
from rich.table import Table
from sklearn.metrics import average_precision_score, roc_auc_score

from engine.build import build_service
from engine.review.process import ReviewServerProcess
from engine.review.store import queue_depth
from engine.review.users import Accounts
from engine.settings import Settings
from engine.sinks import NullSink
from engine.worker_process import WorkerProcess, metric_value, wait_until
from models.reference import reference_histograms
from models.registry import ModelRegistry
from models.train import train_lightgbm
from replay.backtest import feature_log
from replay.inprocess import records_of
from replay.kafka_io import json_items, produce, produce_mixed, producer, read_topic
from replay.live_bench import quantiles_of, worker_rate
from replay.session import fresh_run
from replay.simulate import simulate

console = Console()
DAY_MS = 86_400_000
LABEL_DELAY_MS = DAY_MS

MALFORMED: list[bytes] = [
    b"not json at all",
    b"[1, 2, 3]",
    b'{"event_id": "bad-1", "ts": 1767225600000, "merchant_id": "m1", "amount": 10}',
    b'{"event_id": "bad-2", "ts": 1767225600000, "card_id": "c", "merchant_id": "m", "amount": -5}',
    b'{"event_id": "bad-3", "ts": "yesterday", "card_id": "c", "merchant_id": "m", "amount": 5}',
    b'{"event_id": "bad-4", "ts": 1767225600000, "card_id": "4111111111111111", '
    b'"merchant_id": "m", "amount": 5}',
]


def _labels_for(df: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Labels as they would arrive: every fraud (chargeback) and 5 % of legit (analyst)."""
    keep = df["is_fraud"].to_numpy() | (rng.random(len(df)) < 0.05)
    lab = df.loc[keep, ["event_id", "ts", "is_fraud"]].copy()
    lab["ts"] = lab["ts"] + LABEL_DELAY_MS
    lab["source"] = np.where(lab["is_fraud"], "chargeback", "analyst")
    return lab.sort_values("ts", kind="stable")


def _in_event_time(
    records: list[dict[str, Any]], labels: pd.DataFrame, settings: Settings
) -> list[tuple[str, bytes | None, bytes]]:
    """Transactions and their (later) labels merged by event time, as the world would send them."""
    dumps = orjson.dumps
    items: list[tuple[int, str, bytes | None, bytes]] = [
        (int(r["ts"]), settings.topic_transactions, str(r["card_id"]).encode(), dumps(r))
        for r in records
    ]
    items += [
        (int(r["ts"]), settings.topic_labels, None, dumps(r))
        for r in labels.to_dict("records")
        if int(r["ts"]) <= int(records[-1]["ts"])
    ]
    items.sort(key=lambda t: t[0])
    return [(topic, key, value) for _, topic, key, value in items]


def run_demo(
    days: int, live_days: int, seed: int, customers: int, rate: float, serve: bool = False,
    screenshots: Path | None = None,
) -> dict[str, Any]:
    t_start = time.perf_counter()
    with ExitStack() as stack:
        console.print("[bold]1/6[/] servers: RISKSTREAM_* if set, else the embedded stack")
        env, settings = fresh_run(stack, Path(".riskstream/demo"))
        data_dir = settings.data_dir

        console.print(f"[bold]2/6[/] simulating {days} days, {customers:,} customers (seed {seed})")
        df = simulate(
            days=days, seed=seed, n_customers=customers, n_merchants=max(200, customers // 5)
        )
        cutoff = int(df["ts"].min()) // DAY_MS * DAY_MS + (days - live_days) * DAY_MS
        history, live = df[df["ts"] < cutoff], df[df["ts"] >= cutoff]
        console.print(f"    {len(df):,} transactions, {df['is_fraud'].mean():.2%} fraud; "
                      f"history {len(history):,}, live {len(live):,}")  # fmt: skip

        console.print("[bold]3/6[/] replaying history through the pipeline, labels arriving a day "
                      "later (warms the Redis features)")  # fmt: skip
        service = build_service(settings, sink=NullSink(), use_registry=False, live=False)
        rng = np.random.default_rng(seed)
        x, names, seconds = feature_log(service, history, _labels_for(history, rng))
        y = history["is_fraud"].to_numpy()
        ts = history["ts"].to_numpy()
        valid_from = cutoff - 4 * DAY_MS
        tr, va = ts < valid_from, ts >= valid_from
        console.print(f"    {len(x):,} feature rows in {seconds:.1f}s; "
                      f"training LightGBM on {tr.sum():,}, validating on {va.sum():,}")  # fmt: skip
        # Unweighted classes: calibrated scores, so the review/block thresholds mean what they say.
        result = train_lightgbm(x[tr], y[tr], names, x[va], y[va], params={"scale_pos_weight": 1.0})
        registry = ModelRegistry(settings.models_dir)
        version = registry.register(result.scorer, {
            "train_start": int(ts.min()), "train_end": int(valid_from), "valid_end": int(cutoff),
            "metrics": result.metrics, "source": "demo",
            "reference_histograms": reference_histograms(x[tr], names),
        })  # fmt: skip
        registry.promote(version)
        console.print(f"    model {version}: " + ", ".join(
            f"{k}={v:.3f}" for k, v in result.metrics.items() if isinstance(v, float)))  # fmt: skip

        console.print("[bold]4/6[/] teaching the online model the labels known before the cutoff")
        known = (ts + LABEL_DELAY_MS) < cutoff
        online = service.pipeline.online
        assert online is not None  # noqa: S101 - build_service always makes one
        teach = known & (y | (rng.random(len(y)) < 0.05))
        online.learn_batch(x[teach], y[teach].tolist())
        online.save(settings.checkpoints_dir / "online.pkl")

        console.print("[bold]5/6[/] starting a worker and streaming the last days through Kafka")
        worker_env = {**env, "RISKSTREAM_DATA_DIR": str(settings.data_dir)}
        worker = stack.enter_context(WorkerProcess(worker_env, data_dir / "worker.log"))
        prod = producer(settings.kafka_bootstrap)
        records = records_of(live)
        # A first transaction shows when the worker's consumer group has joined.
        produce(prod, settings.topic_transactions, json_items(records[:1], "card_id"))
        joined = wait_until(
            lambda: metric_value(worker.metrics(), "riskstream_decisions_total") > 0, 180
        )
        if not joined:
            msg = f"worker produced no decision in 180 s; see {data_dir / 'worker.log'}"
            raise RuntimeError(msg)
        labels = _labels_for(live, rng)
        t_stream = time.perf_counter()
        produce_mixed(prod, _in_event_time(records[1:], labels, settings), rate)
        produce(prod, settings.topic_transactions, ((None, m) for m in MALFORMED))
        del prod  # flushed by produce: gone before the broker stops (no librdkafka noise)
        n_expected = len(records)
        values = read_topic(settings.kafka_bootstrap, settings.topic_scores,
                            lambda v: len(v) >= n_expected, timeout=300)  # fmt: skip
        t_done = time.perf_counter()
        wait_until(lambda: metric_value(worker.metrics(), "riskstream_dead_letter_total")
                   >= len(MALFORMED), 30)  # fmt: skip
        text = worker.metrics()

        console.print("[bold]6/6[/] summary")
        decisions = [orjson.loads(v) for v in values]
        summary = _summary(decisions, live, text, settings, t_done - t_stream, version)
        summary["demo_seconds"] = time.perf_counter() - t_start
        _print(summary)
        _review_app(stack, worker_env, data_dir, serve, screenshots)
        return summary


def _review_app(
    stack: ExitStack, env: dict[str, str], data_dir: Path, serve: bool, screenshots: Path | None
) -> None:
    """Start the review app on the demo's cases and print where to sign in; with ``serve``
    keep everything running until Ctrl-C, else check the queue page over HTTP and stop."""
    password = secrets.token_urlsafe(9)
    client = redis.Redis.from_url(env["RISKSTREAM_REDIS_URL"])
    accounts = Accounts(client)
    accounts.add_user("demo", password, "analyst")
    accounts.add_user("demo-lead", password, "lead")
    server = ReviewServerProcess(env, data_dir / "review.log")
    stack.enter_context(server)
    shown = _queue_shown(server.url, "demo", password)
    console.print(f"[bold]review app[/]: {server.url}/  sign in as [bold]demo[/] (analyst) or "
                  f"[bold]demo-lead[/] (lead), password [bold]{password}[/]",
                  soft_wrap=True)  # fmt: skip
    console.print(f"    {shown:,} demo cases in the queue (read from the queue page over HTTP)")
    if screenshots is not None:
        from engine.review.screenshots import capture

        for path in capture(server.url, "demo-lead", password, screenshots):
            console.print(f"    screenshot: {path}")
    if not serve:
        console.print("    not interactive: stopping now (riskstream demo --serve keeps it up)")
        return
    console.print("    press Ctrl-C to stop the demo")
    with contextlib.suppress(KeyboardInterrupt):
        while server.alive():
            time.sleep(0.5)


def _queue_shown(url: str, user: str, password: str) -> int:
    """Sign in like a browser and read the queue's case count off the page."""
    import httpx

    with httpx.Client(base_url=url, follow_redirects=True, timeout=30) as http:
        csrf = re.search(r'name="csrf" value="([^"]+)"', http.get("/login").text)
        page = http.post(
            "/login",
            data={"username": user, "password": password, "csrf": csrf.group(1) if csrf else ""},
        ).text
    total = re.search(r'<strong id="total">(\d+)</strong>', page)
    return int(total.group(1)) if total else 0


def _summary(
    decisions: list[dict[str, Any]],
    live: pd.DataFrame,
    metrics_text: str,
    settings: Settings,
    stream_seconds: float,
    version: str,
) -> dict[str, Any]:
    frame = pd.DataFrame(decisions).drop_duplicates("event_id")
    merged = frame.merge(live[["event_id", "is_fraud"]], on="event_id", how="inner")
    lat = np.asarray(merged["latency_ms"], dtype=float) / 1000.0
    y = merged["is_fraud"].to_numpy().astype(int)
    s = merged["score"].to_numpy()
    counts = merged["decision"].value_counts().to_dict()
    return {
        "events_scored": len(merged),
        "transactions_streamed": len(live),
        "decisions_allow": int(counts.get("allow", 0)),
        "decisions_review": int(counts.get("review", 0)),
        "decisions_block": int(counts.get("block", 0)),
        "review_queue_depth": queue_depth(redis.Redis.from_url(settings.redis_url)),
        "dead_letter": int(metric_value(metrics_text, "riskstream_dead_letter_total")),
        "labels_learned": int(metric_value(metrics_text, "riskstream_labels_learned_total")),
        "throughput_events_per_second": len(merged) / max(stream_seconds, 1e-9),
        "latency_p50_seconds": float(np.percentile(lat, 50)),
        "latency_p99_seconds": float(np.percentile(lat, 99)),
        # The worker's own histogram: Kafka timestamp -> decision flushed (after the produce).
        **quantiles_of(metrics_text),
        "worker_events_per_second": worker_rate(metrics_text),
        "average_precision": float(average_precision_score(y, s)) if y.any() else float("nan"),
        "auc_roc": float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else float("nan"),
        "fraud_rate": float(y.mean()),
        "model": version,
        "rule_set": str(merged["rule_set"].iloc[0]) if len(merged) else "",
    }


def _print(summary: dict[str, Any]) -> None:
    table = Table(title="riskstream demo", show_header=True)
    table.add_column("figure")
    table.add_column("value", justify="right")
    for k, v in summary.items():
        table.add_row(
            k, f"{v:,.4f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)
        )
    console.print(table)
