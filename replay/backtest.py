"""Backtest: what would the engine have decided over a test period, and how good was it?

Two passes over the same pipeline code as live:

1. every transaction up to the end of the test period goes through the feature store in event
   time order, with labels applied when they became known (label time = transaction time + delay,
   or the labels file), so label-based features never see the future;
2. a LightGBM model is trained on the training period's feature log (or a registered model is
   used) and the test period's rows are decided by :meth:`engine.pipeline.Pipeline.decide_batch`
   — rules, model and policy exactly as a live worker with that model would have run them.

Features do not depend on the model, so pass 1's feature log is what live would have computed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import redis
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from engine.build import build_service
from engine.pipeline import PendingFeatures
from engine.service import ScoringService
from engine.settings import Settings
from engine.sinks import NullSink
from models.registry import ModelRegistry
from models.train import train_lightgbm
from replay.inprocess import check_frame, feature_inputs, records_of
from replay.metrics import (
    day_of,
    handbook_metrics,
    known_compromised,
    revealed_ceiling,
    revealed_frauds,
    to_day,
)
from replay.quarantine import (
    REJECTED_LABELS_FILE,
    Quarantine,
    final_truth,
    load_labels,
    load_transactions,
)
from replay.report import render_html

console = Console(stderr=True)
DAY_MS = 86_400_000


class BacktestError(ValueError):
    """A backtest that cannot run on its input (one line for the CLI)."""


def _check_split(name: str, y: np.ndarray[Any, Any], quarantined: int, need_both: bool) -> None:
    """A clear error when a period has no transactions (or, to train, one class only)."""
    frauds = int(y.sum())
    if len(y) and not (need_both and frauds in (0, len(y))):
        return
    what = "no transactions" if not len(y) else f"{len(y):,} transactions, {frauds:,} frauds"
    msg = f"the {name} period has {what}: nothing to {'train' if need_both else 'test'} on"
    if quarantined:
        msg += f" ({quarantined:,} rows of the file were quarantined: see rejected.parquet)"
    raise BacktestError(msg)


@dataclass
class Period:
    train_start: int
    train_end: int
    test_start: int
    test_end: int


def _labels(
    df: pd.DataFrame, labels_path: Path | None, delay_ms: int, strict: bool = False
) -> tuple[pd.DataFrame, Quarantine]:
    """Labels with the time they became known, sorted by that time, and the labels file's
    rejected rows."""
    if labels_path is not None:
        lab, rejected = load_labels(labels_path, strict=strict)
        return lab[["event_id", "ts", "is_fraud"]].sort_values("ts", kind="stable"), rejected
    lab = df.loc[:, ["event_id", "ts", "is_fraud"]].copy()
    lab["ts"] = lab["ts"] + delay_ms
    return lab.sort_values("ts", kind="stable"), Quarantine()


def feature_log(
    service: ScoringService,
    df: pd.DataFrame,
    labels: pd.DataFrame,
    batch_size: int = 1000,
    quarantined: int = 0,
) -> tuple[np.ndarray[Any, np.dtype[np.float64]], list[str], float]:
    """Pass 1: the feature row of every transaction, labels applied as they became known.

    The live feature code (:meth:`engine.pipeline.Pipeline.submit_features`), fed straight from
    the columns (checked once by :func:`replay.inprocess.check_frame`); the next batch is
    submitted before the last one is read, so the server applies it meanwhile.
    """
    check_frame(df)
    pipeline = service.pipeline
    store = pipeline.features
    names = list(pipeline.feature_names)
    fields = store.entity_fields
    rows: list[np.ndarray[Any, np.dtype[np.float64]]] = []
    label_ts = labels["ts"].to_numpy()
    label_ids = labels["event_id"].astype(str).tolist()
    label_fraud = labels["is_fraud"].to_numpy(bool)
    next_label = 0
    t0 = time.perf_counter()
    waiting: PendingFeatures | None = None
    title = f"features ({quarantined:,} rows quarantined)" if quarantined else "features"
    with Progress(
        TextColumn(f"[bold]{title}"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,}"),
        TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=console, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("features", total=len(df), rate="")
        for start in range(0, len(df), batch_size):
            chunk = df.iloc[start : start + batch_size]
            first_ts = int(chunk["ts"].iloc[0])
            upto = int(np.searchsorted(label_ts, first_ts, side="left"))
            if upto > next_label:  # labels known before this batch's first transaction
                store.submit_labels(
                    label_ids[next_label:upto], label_ts[next_label:upto],
                    label_fraud[next_label:upto],
                )  # fmt: skip
                next_label = upto
            sent = pipeline.submit_features(*feature_inputs(chunk, fields))
            if waiting is not None:
                rows.append(waiting.result())
            waiting = sent
            done = start + len(chunk)
            bar.update(task, completed=done, rate=f"{done / (time.perf_counter() - t0):,.0f} ev/s")
        if waiting is not None:
            rows.append(waiting.result())
    x = np.vstack(rows) if rows else np.zeros((0, len(names)))
    return x, names, time.perf_counter() - t0


def run_backtest(
    settings: Settings,
    transactions: Path,
    period: Period,
    out: Path,
    labels_path: Path | None = None,
    label_delay_ms: int = 7 * DAY_MS,
    model_version: str | None = None,
    valid_days: int = 0,
    seed: int = 0,
    strict: bool = False,
) -> dict[str, Any]:
    t_all = time.perf_counter()
    df, quarantine = load_transactions(transactions, strict=strict)
    out.mkdir(parents=True, exist_ok=True)
    quarantine.write(out)
    if labels_path is None and "is_fraud" not in df.columns:
        msg = f"{transactions} has no is_fraud column: pass --labels FILE"
        raise BacktestError(msg)
    df = df[df["ts"] < period.test_end].sort_values("ts", kind="stable").reset_index(drop=True)
    redis.Redis.from_url(settings.redis_url).flushdb()  # a backtest starts from empty state
    service = build_service(settings, sink=NullSink(), use_registry=False, live=False)
    labels, bad_labels = _labels(df, labels_path, label_delay_ms, strict)
    if labels_path is not None:
        bad_labels.write(out, REJECTED_LABELS_FILE)
    x, names, t_features = feature_log(service, df, labels, settings.batch_size, quarantine.count)
    ts = df["ts"].to_numpy()
    if labels_path is not None:  # the truth is the last label of each event (as train's)
        y = final_truth(labels, df["event_id"]).to_numpy()
        df = df.assign(is_fraud=y)  # one truth for the scores and for evaluate()'s history
    else:
        y = df["is_fraud"].to_numpy().astype(bool)

    if model_version is not None:
        scorer = ModelRegistry(settings.models_dir).load(model_version)
        train_metrics: dict[str, Any] = {"model": model_version}
    else:
        train = (ts >= period.train_start) & (ts < period.train_end)
        _check_split("training", y[train], quarantine.count, need_both=True)
        # Unweighted classes keep scores calibrated, so the policy's thresholds mean what they
        # say (on the handbook it was also the better ranker: AP 0.736 vs 0.721 on seed 0). A
        # smaller learning rate suits a week of data (~400 frauds): on the handbook's three seeds
        # AP 0.723 -> 0.731 and card precision@100 0.309 -> 0.312 (0.05 -> 0.02, 300 trees).
        params = {"seed": seed, "scale_pos_weight": 1.0, "learning_rate": 0.02}
        if valid_days > 0:  # early stopping on the last days of the training period
            split = period.train_end - valid_days * DAY_MS
            fit, valid = train & (ts < split), train & (ts >= split)
            result = train_lightgbm(x[fit], y[fit], names, x[valid], y[valid], params=params)
        else:  # the handbook's protocol: all training days, a fixed number of trees
            result = train_lightgbm(x[train], y[train], names, params=params)
        scorer = result.scorer
        train_metrics = {f"train_{k}": v for k, v in result.metrics.items()}
    service.pipeline.champion = scorer

    test = np.flatnonzero((ts >= period.test_start) & (ts < period.test_end))
    _check_split("test", y[test], quarantine.count, need_both=False)
    t1 = time.perf_counter()
    test_df = df.iloc[test]
    records = records_of(test_df)
    scores: list[float] = []
    decisions: list[str] = []
    rule_hits: dict[str, int] = {}
    for start in range(0, len(test), settings.batch_size):
        recs = records[start : start + settings.batch_size]
        batch = service.pipeline.decide_batch(
            recs, x[test[start : start + settings.batch_size]], names
        )
        for d in batch.decisions:
            scores.append(d.score)
            decisions.append(d.decision)
            for r in d.reasons:
                if r.startswith("rule:"):
                    rule_hits[r[5:]] = rule_hits.get(r[5:], 0) + 1
    t_decide = time.perf_counter() - t1

    frame = pd.DataFrame({
        "event_id": test_df["event_id"].to_numpy(), "ts": test_df["ts"].to_numpy(),
        "card_id": test_df["card_id"].to_numpy(), "score": scores, "decision": decisions,
        "is_fraud": y[test],
    })  # fmt: skip
    report = evaluate(frame, df, period, label_delay_ms)
    report.update(train_metrics)
    report.update({
        "model": scorer.version,
        "rule_set": service.pipeline.rules.version,
        "n_transactions_replayed": len(df),
        "n_quarantined": quarantine.count,
        "quarantined": quarantine.by_reason(),
        "n_labels_quarantined": bad_labels.count,
        "labels_quarantined": bad_labels.by_reason(),
        "events_per_second": (len(df) + len(test)) / (t_features + t_decide),
        "feature_events_per_second": len(df) / t_features,
        "seconds": time.perf_counter() - t_all,
    })  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    frame[["event_id", "score", "decision"]].to_parquet(out / "predictions.parquet", index=False)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    booster = lgb.Booster(model_str=scorer.model_text)
    importance = dict(zip(names, booster.feature_importance("gain").tolist(), strict=True))
    (out / "report.html").write_text(render_html(report, frame, importance, rule_hits))
    return report


def evaluate(
    frame: pd.DataFrame, history: pd.DataFrame, period: Period, label_delay_ms: int
) -> dict[str, Any]:
    """The handbook's protocol: on each test day, cards already known compromised (a fraud on a
    day whose labels had arrived: from the training start to ``day - delay - 1``) are removed;
    AUC ROC and average precision are over the remaining transactions, card precision@100 is
    the mean over test days of the daily top-100 cards (detected cards leave later days)."""
    first = to_day(period.train_start)
    days = day_of(frame["ts"])
    test_days = sorted({int(d) for d in days})
    known = known_compromised(
        history["card_id"], history["ts"], history["is_fraud"], first, test_days,
        max(0, label_delay_ms // DAY_MS),
    )  # fmt: skip
    cards = frame["card_id"].to_numpy(dtype=object)
    keep = np.ones(len(frame), dtype=bool)
    for d in test_days:
        if known[d]:
            on_day = days == d
            keep[on_day] = ~pd.Series(cards[on_day]).isin(known[d]).to_numpy()
    kept = frame[keep].reset_index(drop=True)
    out = handbook_metrics(kept, kept["score"].to_numpy(dtype=float), 100, known)
    if "fraud_pattern" in history.columns:  # a simulated world: how much could a model reveal?
        revealed = pd.Series(revealed_frauds(history, label_delay_ms), index=history["event_id"])
        kept_revealed = revealed.reindex(kept["event_id"]).fillna(False).to_numpy(dtype=bool)
        out["revealed_ceiling_card_precision_at_100"] = revealed_ceiling(
            kept, kept["score"].to_numpy(dtype=float), kept_revealed
        )
        out["n_test_frauds_unrevealed"] = int((kept["is_fraud"] & ~kept_revealed).sum())
    out["n_test_scored"] = len(frame)
    out["decisions"] = {str(k): int(v) for k, v in frame["decision"].value_counts().items()}
    return out
