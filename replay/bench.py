"""``make bench``: figures for the pipeline in-process and through a worker, as one flat JSON.

In-process: µs/event per stage (decode, features, rules, model, online, emit, flush) over batches
of 1,000 on a real Redis, with a champion model and an online model that has learned, and
``drift_overhead_ratio``: the time the drift statistics (engine/drift.py) add to a batch, over
the time of its stages. Through a worker on the embedded stack, beside a plain Kafka consumer and
a bare Faust agent on the same messages: throughput, stage breakdown per batch, latency at
5,000/s, the knee, two workers (:mod:`replay.live_bench`).
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
import redis
from rich.console import Console
from rich.table import Table

from engine.build import build_service
from engine.drift import DriftTracker
from engine.pipeline import STAGES
from engine.sinks import NullSink
from models.lgbm import FloatArray, LightGBMScorer
from models.reference import drift_reference
from models.registry import ModelRegistry
from models.train import train_lightgbm
from replay.inprocess import run_inprocess
from replay.live_bench import KNEE_RATES, live_figures
from replay.session import fresh_run
from replay.simulate import simulate

console = Console()
DAY_MS = 86_400_000


def run_bench(
    out: Path,
    e2e_events: int = 60000,
    latency_seconds: float = 60.0,
    knee_rates: tuple[float, ...] = KNEE_RATES,
    scaling: bool = True,
) -> dict[str, Any]:
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
        service.pipeline.champion = registry.load(version, **settings.scorer_options())
        online = service.pipeline.online
        if online is not None:  # online learning on: in-process and the worker use what it learned
            teach = (np.random.default_rng(5).random(len(y)) < 0.1) | y.astype(bool)
            online.learn_batch(run.feature_matrix()[teach], y[teach].tolist())
            online.save(settings.checkpoints_dir / "online.pkl")

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
        # per-batch time without drift = the pipeline stages; the ratio is what drift adds
        results["drift_overhead_ratio"] = drift_s / sum(timed.stage_seconds.values())
        results["stage_drift_us_per_event"] = drift_s / n * 1e6
        for stage in STAGES:
            results[f"stage_{stage}_us_per_event"] = timed.stage_seconds.get(stage, 0.0) / n * 1e6
        results["inprocess_events_per_second"] = n / sum(timed.stage_seconds.values())
        results["inprocess_wall_events_per_second"] = n / wall
        results["features_events_per_second"] = n / timed.stage_seconds["features"]
        results["inprocess_events"] = n
        results.update(explain_figures(trained.scorer, timed.feature_matrix()))

        from features.bench import measure as features_measure
        from rules.bench import measure as rules_measure

        results.update(rules_measure())
        results["pipeline_features_events_per_second"] = results.pop("features_events_per_second")
        results.update(features_measure(redis.Redis.from_url(settings.redis_url)))
        redis.Redis.from_url(settings.redis_url).flushdb()
        worker_env = {**env, "RISKSTREAM_DATA_DIR": str(data_dir)}
        results.update(live_figures(stack, settings, worker_env, data_dir, e2e_events,
                                    latency_seconds, knee_rates, scaling))  # fmt: skip

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    _print(results, out)
    return results


def explain_figures(scorer: LightGBMScorer, x: FloatArray, rows: int = 200) -> dict[str, float]:
    """What reasons cost per explained row by TreeSHAP and by path contributions
    (``explain_<method>_us_per_row``, one thread each), and how often the two agree on the
    ``rows`` highest-scored rows (the ones a policy flags): the same top feature
    (``explain_path_top1_agreement``) and the share of the top three they share
    (``explain_path_top3_overlap``)."""
    scores = scorer.score_batch(x)
    top = x[np.argsort(-scores, kind="stable")[:rows]]
    out: dict[str, float] = {}
    ranked = {}
    for method in ("shap", "path"):
        s = LightGBMScorer.from_string(scorer.model_text, 1, 1, method)
        s.explain_batch(top[:2])  # the first call compiles or warms up
        t0 = time.perf_counter()
        ranked[method] = [[name for name, _, _ in r] for r in s.explain_batch(top)]
        out[f"explain_{method}_us_per_row"] = (time.perf_counter() - t0) / len(top) * 1e6
    pairs = list(zip(ranked["shap"], ranked["path"], strict=True))
    out["explain_path_top1_agreement"] = float(np.mean([a[0] == b[0] for a, b in pairs]))
    out["explain_path_top3_overlap"] = float(np.mean([len(set(a) & set(b)) / 3 for a, b in pairs]))
    return out


def _print(results: dict[str, Any], out: Path) -> None:
    table = Table(title=f"riskstream bench ({out})")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for k in sorted(results):
        table.add_row(k, _fmt(results[k]))
    console.print(table)
    print("\n| figure | value |\n|---|---|")
    for k in sorted(results):
        print(f"| {k} | {_fmt(results[k])} |")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.4f}" if abs(v) < 10 else f"{v:,.1f}"
    if isinstance(v, dict):
        return " ".join(f"{k}:{_fmt(x)}" for k, x in v.items() if x)
    return str(v)
