"""``make bench``: figures for the pipeline in-process and through a worker, as one flat JSON.

In-process: µs/event per stage (decode, features, rules, model, emit) over batches of 1,000 on a
real Redis, and ``drift_overhead_ratio``: the time the drift statistics (engine/drift.py) add to
a batch, over the time of its five stages. Through a worker on the embedded stack: end-to-end
events/s (produce as fast as possible, until every decision is back on ``scores``) and decision
latency p50/p95/p99 at half that rate (Kafka timestamp → decision emitted).
"""

from __future__ import annotations

import json
import os
import platform
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import redis
from rich.console import Console
from rich.table import Table

from engine.build import build_service
from engine.drift import DriftTracker
from engine.sinks import NullSink
from engine.worker_process import WorkerProcess, metric_value, wait_until
from models.reference import drift_reference
from models.registry import ModelRegistry
from models.train import train_lightgbm
from replay.inprocess import records_of, run_inprocess
from replay.kafka_io import json_items, produce, producer, read_topic
from replay.session import fresh_run
from replay.simulate import simulate

console = Console()
DAY_MS = 86_400_000


def _decisions_after(
    bootstrap: str, topic: str, prefix: str, n: int, timeout: float
) -> list[dict[str, Any]]:
    def enough(values: list[bytes]) -> bool:
        return sum(1 for v in values if prefix.encode() in v[:80]) >= n

    values = read_topic(bootstrap, topic, enough, timeout)
    out = [orjson.loads(v) for v in values]
    return [d for d in out if str(d.get("event_id", "")).startswith(prefix)]


def run_bench(out: Path, e2e_events: int = 30000) -> dict[str, Any]:
    results: dict[str, Any] = {
        "machine_cores": os.cpu_count() or 0,
        "python": platform.python_version(),
    }
    data_dir = Path(".bench/run")
    with ExitStack() as stack:
        env, settings = fresh_run(stack, data_dir)

        console.print("[bold]bench[/]: simulating and training a model for the model stage")
        df = simulate(days=14, seed=11, n_customers=3000, n_merchants=600)
        cut = int(df["ts"].min()) // DAY_MS * DAY_MS + 10 * DAY_MS
        history, rest = df[df["ts"] < cut], df[df["ts"] >= cut]
        service = build_service(settings, sink=NullSink(), use_registry=False, live=True)
        run = run_inprocess(service, history, 1000, label="warm-up")
        y = history["is_fraud"].to_numpy()
        x = run.feature_matrix()
        trained = train_lightgbm(x, y, run.feature_names, params={"scale_pos_weight": 1.0})
        registry = ModelRegistry(settings.models_dir)
        reference = drift_reference(
            x, run.feature_names, trained.scorer.score_batch(x), float(y.mean())
        )
        version = registry.register(
            trained.scorer, {"source": "bench", "reference_histograms": reference}
        )
        registry.promote(version)
        service.pipeline.champion = registry.load(version)

        console.print(f"[bold]bench[/]: in-process pipeline over {len(rest):,} events")
        # a window smaller than the run, so the drift stage's steady state (rows leaving the
        # ring as others enter) is what is timed
        service.drift = DriftTracker(
            settings.models_dir, service.redis, window=10_000, min_rows=1000,
            online_version=service.pipeline.online.version if service.pipeline.online else None,
        )  # fmt: skip
        t0 = time.perf_counter()
        timed = run_inprocess(service, rest, 1000, label="in-process")
        wall = time.perf_counter() - t0
        n = len(rest)
        drift_s = timed.stage_seconds.pop("drift", 0.0)
        # per-batch time without drift = the five pipeline stages; the ratio is what drift adds
        results["drift_overhead_ratio"] = drift_s / sum(timed.stage_seconds.values())
        results["stage_drift_us_per_event"] = drift_s / n * 1e6
        for stage in ("decode", "features", "rules", "model", "emit"):
            results[f"stage_{stage}_us_per_event"] = timed.stage_seconds.get(stage, 0.0) / n * 1e6
        results["inprocess_events_per_second"] = n / sum(timed.stage_seconds.values())
        results["inprocess_wall_events_per_second"] = n / wall
        results["features_events_per_second"] = n / timed.stage_seconds["features"]
        results["inprocess_events"] = n

        from features.bench import measure as features_measure
        from rules.bench import measure as rules_measure

        results.update(rules_measure())
        results["pipeline_features_events_per_second"] = results.pop("features_events_per_second")
        results.update(features_measure(redis.Redis.from_url(settings.redis_url)))
        redis.Redis.from_url(settings.redis_url).flushdb()

        console.print("[bold]bench[/]: starting a worker on the embedded stack")
        worker_env = {**env, "RISKSTREAM_DATA_DIR": str(data_dir)}
        worker = stack.enter_context(WorkerProcess(worker_env, data_dir / "worker.log"))
        prod = producer(settings.kafka_bootstrap)
        base = rest.iloc[:1].copy()
        base["event_id"] = "warm-0"
        produce(prod, settings.topic_transactions, json_items(records_of(base), "card_id"))
        if not wait_until(
            lambda: metric_value(worker.metrics(), "riskstream_decisions_total") > 0, 180
        ):
            msg = f"worker made no decision; see {data_dir / 'worker.log'}"
            raise RuntimeError(msg)

        e2e = simulate(days=max(1, e2e_events // 6000 + 1), seed=12, n_customers=3000,
                       n_merchants=600, start="2026-03-01").iloc[:e2e_events].copy()  # fmt: skip
        e2e["event_id"] = "tp-" + e2e["event_id"].astype(str)
        recs = records_of(e2e)
        console.print(
            f"[bold]bench[/]: end-to-end throughput, {len(recs):,} events as fast as possible"
        )
        t0 = time.perf_counter()
        produce(prod, settings.topic_transactions, json_items(recs, "card_id"))
        got = _decisions_after(
            settings.kafka_bootstrap, settings.topic_scores, "tp-", len(recs), 600
        )
        t_tp = time.perf_counter() - t0
        results["e2e_events"] = len(got)
        results["e2e_events_per_second"] = len(got) / t_tp

        rate = max(200.0, 0.5 * results["e2e_events_per_second"])
        n_lat = int(min(len(recs), rate * 10))
        lat_df = e2e.iloc[:n_lat].copy()
        lat_df["event_id"] = "lat-" + lat_df["event_id"].str.removeprefix("tp-")
        console.print(f"[bold]bench[/]: latency, {n_lat:,} events paced at {rate:,.0f}/s")
        produce(prod, settings.topic_transactions, json_items(records_of(lat_df), "card_id"), rate)
        got = _decisions_after(settings.kafka_bootstrap, settings.topic_scores, "lat-", n_lat, 300)
        lat = np.array([d["latency_ms"] for d in got]) / 1000.0
        results["latency_rate_events_per_second"] = rate
        for q in (50, 95, 99):
            results[f"latency_p{q}_seconds"] = (
                float(np.percentile(lat, q)) if len(lat) else float("nan")
            )

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    _print(results, out)
    return results


def _print(results: dict[str, Any], out: Path) -> None:
    table = Table(title=f"riskstream bench ({out})")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for k in sorted(results):
        v = results[k]
        table.add_row(k, f"{v:,.3f}" if isinstance(v, float) else str(v))
    console.print(table)
    print("\n| figure | value |\n|---|---|")
    for k in sorted(results):
        v = results[k]
        print(f"| {k} | {v:,.3f} |" if isinstance(v, float) else f"| {k} | {v} |")
