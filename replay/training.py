"""Train LightGBM from history by replaying it through the very pipeline that serves.

``riskstream train`` (see :func:`train_from_history`):

1. **Replay.** Transactions from ``train_start - warmup`` (the warm-up fills the feature windows;
   default: the longest window of the feature spec) up to the end of the last period are scored
   in event-time order by a :class:`~engine.service.ScoringService` built exactly as a worker
   builds it (same feature store, rules and policy; no champion, so decisions are rules-only), on
   a scratch Redis database, and the labels are fed to ``process_labels`` **at the time they
   became known**, interleaved with the transactions.
2. **Labels never leak.** A label with time ``t`` is applied before the first transaction batch
   whose first transaction is later than ``t + label_lag`` (default 5 minutes of event time) and
   never before a transaction with time ``<= t``: a transaction batch is cut where the next label
   falls due, labels of the same instant as a transaction come after it. So whatever reads labels
   at scoring time (the River model now; label-based features when the feature store has them)
   sees only labels that had arrived, at most ``label_lag`` late, as a live worker does (it learns
   labels between micro-batches). The River model learns from these labels during the replay,
   so its scores in the later periods are honest progressive (test-then-train) scores.
3. **Train.** LightGBM (class-imbalance weight ``n_neg / n_pos``) on rows with
   ``train_start <= ts < train_end``, early stopping on average precision over the later
   validation period ``train_end <= ts < valid_end``. Training targets are the final truth known
   now: every label in the labels file (unlabelled transactions count as legitimate), or the
   transactions' own ``is_fraud`` with ``--label-delay``.
4. **Evaluate.** AUC ROC, average precision and card precision@100 on the validation period
   (and on an optional held-out ``valid_end <= ts < test_end`` period, never used for training
   or early stopping) for: the LightGBM model, the River online model alone, the Half-Space-Trees
   anomaly score alone, and the rules alone (score 1 when a review/block rule hit, i.e. when the
   rules-only decision is not ``allow``).
5. **Register.** Model + metadata: feature names and order, training/validation/test windows,
   metrics, reference histograms of every feature (training rows) and of the score (validation
   rows: out-of-sample, as live scores will be), a fingerprint of the input files, the rule set
   and LightGBM parameters. Optionally promote it.

Training never touches live state: it works on a scratch Redis database that must be empty (or
a previous training's scratch DB) and is flushed afterwards, and on a temporary data dir (no
online checkpoint is read or written); only the model registry is written.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import numpy.typing as npt
import orjson
import pandas as pd
import redis
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from engine.build import build_service
from engine.policy import ALLOW
from engine.schemas import RawMessage
from engine.service import ScoringService
from engine.settings import Settings
from engine.sinks import NullSink
from models.anomaly import AnomalyModel
from models.evaluation import binary_metrics
from models.online import OnlineLogisticModel
from models.reference import drift_reference
from models.registry import ModelRegistry
from models.train import train_lightgbm
from replay import merge
from replay.inprocess import encode, records_of
from replay.quarantine import (
    REJECTED_LABELS_FILE,
    Quarantine,
    final_truth,
    load_labels,
    load_transactions,
)

FloatArray = npt.NDArray[np.float64]

DAY_MS = 86_400_000
#: Marker key of a scratch database: training only ever flushes a DB that carries it (or is empty).
SCRATCH_MARKER = "rs:training:scratch"
DEFAULT_SCRATCH_DB = 15
DEFAULT_LABEL_LAG_MS = 5 * 60_000
MODELS = ("lightgbm", "river", "hst", "rules")


class TrainingError(ValueError):
    """Bad training input (periods, files, labels): one clear message for the CLI."""


def parse_time(value: str | int) -> int:
    """Epoch ms from epoch ms, ISO-8601 (with or without zone: UTC assumed) or ``YYYY-MM-DD``."""
    try:
        return merge.parse_time(value)
    except ValueError as exc:
        raise TrainingError(str(exc)) from None


def iso(ms: int) -> str:
    return str(pd.Timestamp(ms, unit="ms", tz="UTC").isoformat())


@dataclass
class TrainingConfig:
    """What to train on; times are epoch milliseconds (see :func:`parse_time`)."""

    transactions: Path
    train_start: int
    train_end: int
    valid_end: int | None = None  # default: end of the file
    test_end: int | None = None  # optional held-out period [valid_end, test_end)
    labels: Path | None = None
    label_delay_ms: int | None = None  # when no labels file: labels from is_fraud, this late
    label_lag_ms: int = DEFAULT_LABEL_LAG_MS
    warmup_ms: int | None = None  # default: the longest feature window
    batch_size: int = 1000
    num_boost_round: int = 1000
    promote: bool = False
    progress: bool = True
    strict: bool = False  # stop at the first bad row instead of quarantining it
    out: Path | None = None  # where rejected.parquet goes (default: DATA_DIR/train)


@dataclass
class ReplayResult:
    """Row-aligned output of the replay (one row per scored transaction)."""

    event_ids: list[str]
    ts: npt.NDArray[np.int64]
    card_ids: list[str]
    features: FloatArray
    feature_names: list[str]
    river: FloatArray
    hst: FloatArray
    rules: FloatArray
    labels_applied: int = 0
    labels_learned: int = 0
    dead: int = 0
    seconds: float = 0.0


@dataclass
class TrainingReport:
    version: str
    promoted: bool
    metrics: dict[str, dict[str, dict[str, float]]]  # period -> model -> metric -> value
    n_rows: dict[str, int]
    replay_events_per_second: float
    seconds: float
    metadata: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- scratch Redis


def scratch_url(redis_url: str, db: int) -> str:
    """``redis_url`` with its database number replaced by ``db``."""
    parts = urlsplit(redis_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


def claim_scratch(client: redis.Redis, live_url: str, url: str) -> None:
    """Make sure ``client`` is a DB training may flush: empty, or marked by an earlier training."""
    if urlsplit(live_url).path.strip("/") == urlsplit(url).path.strip("/"):
        msg = f"the scratch database {url} is the live one; choose another --scratch-db"
        raise TrainingError(msg)
    if client.dbsize() and not client.exists(SCRATCH_MARKER):
        msg = (
            f"scratch database {url} is not empty and was not made by riskstream train; "
            "choose another --scratch-db"
        )
        raise TrainingError(msg)
    client.flushdb()
    client.set(SCRATCH_MARKER, b"1")


# ------------------------------------------------------------------------------------ inputs


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_inputs(
    cfg: TrainingConfig,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any], Quarantine, Quarantine | None]:
    """Transactions (sorted by ts, with a ``target`` column), labels (sorted by arrival), the
    inputs' fingerprint, and the rows quarantined from the transactions file and from the
    labels file (None without one). A transactions file without a required column has every
    row quarantined (see :func:`replay.quarantine.load_transactions`)."""
    tx, quarantine = load_transactions(cfg.transactions, strict=cfg.strict)
    tx = tx.sort_values("ts", kind="stable").reset_index(drop=True)
    fingerprint: dict[str, Any] = {
        "transactions": {
            "file": cfg.transactions.name,
            "sha256": _sha256(cfg.transactions),
            "rows": len(tx) + quarantine.count,
        },
    }
    bad_labels: Quarantine | None = None
    if cfg.labels is not None:
        labels, bad_labels = load_labels(cfg.labels, strict=cfg.strict)
        labels = labels.sort_values("ts", kind="stable").reset_index(drop=True)
        target = final_truth(labels, tx["event_id"])
        fingerprint["labels"] = {
            "file": cfg.labels.name, "sha256": _sha256(cfg.labels),
            "rows": len(labels) + bad_labels.count,
        }  # fmt: skip
    else:
        if "is_fraud" not in tx:
            msg = f"{cfg.transactions} has no is_fraud column: pass --labels FILE"
            raise TrainingError(msg)
        delay = cfg.label_delay_ms if cfg.label_delay_ms is not None else DAY_MS
        target = tx["is_fraud"].fillna(False).astype(bool)
        labels = (
            pd.DataFrame(
                {
                    "event_id": tx["event_id"],
                    "ts": tx["ts"] + delay,
                    "is_fraud": target,
                    "source": np.where(target, "chargeback", "confirmed"),
                }  # fmt: skip
            )
            .sort_values("ts", kind="stable")
            .reset_index(drop=True)
        )
        fingerprint["label_delay_ms"] = delay
    tx["target"] = target.to_numpy()
    return tx, labels, fingerprint, quarantine, bad_labels


# ------------------------------------------------------------------------------------ replay


def replay_history(
    service: ScoringService,
    tx: pd.DataFrame,
    labels: pd.DataFrame,
    batch_size: int = 1000,
    label_lag_ms: int = DEFAULT_LABEL_LAG_MS,
    anomaly: AnomalyModel | None = None,
    progress: bool = True,
    title: str = "replay",
) -> ReplayResult:
    """Score ``tx`` (sorted by ts) in event-time order, applying ``labels`` when they arrive.

    See the module docstring for the ordering guarantee. ``anomaly``, when given, scores each
    batch before learning from it (progressive, like a worker would run it).
    """
    tx_ts = tx["ts"].to_numpy(dtype=np.int64)
    lab_ts = labels["ts"].to_numpy(dtype=np.int64)
    lab_records: list[dict[str, Any]] = labels.to_dict("records")
    names = list(service.pipeline.feature_names)
    online = service.pipeline.online
    out_ids: list[str] = []
    out_ts: list[int] = []
    out_cards: list[str] = []
    feats: list[FloatArray] = []
    river: list[float] = []
    hst: list[FloatArray] = []
    rules: list[float] = []
    applied = learned = dead = 0
    n, m = len(tx), len(lab_ts)
    i = j = 0
    spent = 0.0
    dumps = orjson.dumps

    def apply_labels(until: int) -> None:
        """Labels with ts < ``until`` (all of them when until is None)."""
        nonlocal j, applied, learned
        k = int(np.searchsorted(lab_ts, until, side="left"))
        while j < k:
            chunk = lab_records[j : min(k, j + batch_size)]
            msgs = [RawMessage(dumps(r, option=orjson.OPT_SERIALIZE_NUMPY), "labels")
                    for r in chunk]  # fmt: skip
            report = service.process_labels(msgs)
            applied += len(chunk)
            learned += report.learned
            j += len(chunk)

    with Progress(
        TextColumn(f"[bold]{title}"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,}"),
        TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[at]}"),
        TimeRemainingColumn(), disable=not progress, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("replay", total=n, rate="", at="")
        while i < n:
            apply_labels(int(tx_ts[i]))  # every label that arrived before this transaction
            end = min(n, i + batch_size)
            if j < m:  # cut where the next label falls due (ts > label ts + lag)
                due = int(np.searchsorted(tx_ts, lab_ts[j] + label_lag_ms, side="right"))
                end = max(i + 1, min(end, due))
            t0 = time.perf_counter()
            chunk = tx.iloc[i:end]
            report = service.process_transactions(encode(records_of(chunk)))
            dead += report.dead
            scored = report.scored
            if scored is not None:
                x = scored.features
                if anomaly is not None:
                    hst.append(anomaly.score_batch(x))
                    anomaly.learn_batch(x)
                feats.append(x)
                ov = online.version if online is not None else None
                for d in scored.decisions:
                    out_ids.append(d.event_id)
                    out_ts.append(d.ts)
                    out_cards.append(d.card_id)
                    river.append(d.shadow.get(ov, math.nan) if ov else math.nan)
                    rules.append(0.0 if d.decision == ALLOW else 1.0)
            spent += time.perf_counter() - t0
            bar.update(task, advance=end - i, rate=f"{(end) / max(spent, 1e-9):,.0f} ev/s",
                       at=iso(int(tx_ts[end - 1]))[:16])  # fmt: skip
            i = end
        if n:
            apply_labels(int(tx_ts[-1]) + 1)  # labels that arrived by the last transaction
    width = len(names)
    return ReplayResult(
        event_ids=out_ids,
        ts=np.asarray(out_ts, dtype=np.int64),
        card_ids=out_cards,
        features=np.vstack(feats) if feats else np.zeros((0, width)),
        feature_names=names,
        river=np.asarray(river, dtype=np.float64),
        hst=np.concatenate(hst) if hst else np.zeros(len(out_ids)),
        rules=np.asarray(rules, dtype=np.float64),
        labels_applied=applied,
        labels_learned=learned,
        dead=dead,
        seconds=spent,
    )


# ------------------------------------------------------------------------------------- train


def _periods(cfg: TrainingConfig, last_ts: int) -> dict[str, tuple[int, int]]:
    valid_end = cfg.valid_end if cfg.valid_end is not None else last_ts + 1
    periods = {"train": (cfg.train_start, cfg.train_end), "valid": (cfg.train_end, valid_end)}
    if cfg.test_end is not None:
        periods["test"] = (valid_end, cfg.test_end)
    bounds = [cfg.train_start, cfg.train_end, valid_end] + (
        [cfg.test_end] if cfg.test_end is not None else []
    )
    if any(a >= b for a, b in zip(bounds, bounds[1:], strict=False)):
        msg = "periods must be ordered: train-start < train-end < valid-end (< test-end)"
        raise TrainingError(msg)
    return periods


def train_from_history(
    settings: Settings,
    cfg: TrainingConfig,
    client: redis.Redis,
    log: Callable[[str], None] = print,
) -> TrainingReport:
    """Replay, train, evaluate and register (see the module docstring); ``client`` is scratch.

    ``client`` must be a Redis database training may flush (see :func:`claim_scratch`); it is
    flushed before and after. ``settings`` gives the rules, thresholds and the model registry.
    """
    t_start = time.perf_counter()
    tx, labels, fingerprint, quarantine, bad_labels = load_inputs(cfg)
    rejected_path = quarantine.write(cfg.out or settings.data_dir / "train")
    if quarantine.count:
        log(f"{quarantine.summary()}: {rejected_path}")
    fingerprint["transactions"]["quarantined"] = quarantine.by_reason()
    if bad_labels is not None:
        path = bad_labels.write(cfg.out or settings.data_dir / "train", REJECTED_LABELS_FILE)
        if bad_labels.count:
            log(f"labels: {bad_labels.summary()}: {path}")
        fingerprint["labels"]["quarantined"] = bad_labels.by_reason()
    if tx.empty:
        msg = f"{cfg.transactions} has no transactions"
        raise TrainingError(msg)
    periods = _periods(cfg, int(tx["ts"].iloc[-1]))
    tmp = Path(tempfile.mkdtemp(prefix="riskstream-train-"))
    client.flushdb()  # scratch: what another run or spec left there must not be read back
    try:
        scratch = settings.model_copy(update={"data_dir": tmp, "batch_size": cfg.batch_size})
        service = build_service(scratch, sink=NullSink(), client=client, use_registry=False)
        store_spec = getattr(service.pipeline.features, "spec", ())
        longest_s = max((f.window_seconds for f in store_spec), default=86_400)
        warmup = cfg.warmup_ms if cfg.warmup_ms is not None else longest_s * 1000
        first = cfg.train_start - warmup
        last = max(end for _, end in periods.values())
        part = tx[(tx["ts"] >= first) & (tx["ts"] < last)].reset_index(drop=True)
        in_part = labels["event_id"].isin(part["event_id"])
        lab = labels[in_part & (labels["ts"] < last)].reset_index(drop=True)
        names = list(service.pipeline.feature_names)
        service.pipeline.online = OnlineLogisticModel(names)  # learns only from this replay
        anomaly = AnomalyModel(names)
        anomaly.warm_up()
        log(
            f"replaying {len(part):,} transactions ({iso(first)[:16]} .. {iso(last)[:16]}) "
            f"with {len(lab):,} labels through the pipeline"
        )
        title = f"replay ({quarantine.count:,} quarantined)" if quarantine.count else "replay"
        rep = replay_history(service, part, lab, cfg.batch_size, cfg.label_lag_ms, anomaly,
                             cfg.progress, title)  # fmt: skip
        rule_set = service.pipeline.rules.version
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        client.flushdb()
        client.set(SCRATCH_MARKER, b"1")

    target = part.set_index("event_id")["target"]
    y = target.reindex(rep.event_ids).fillna(False).to_numpy(dtype=bool)
    masks = {p: (rep.ts >= a) & (rep.ts < b) for p, (a, b) in periods.items()}
    n_rows = {p: int(mk.sum()) for p, mk in masks.items()}
    for p in ("train", "valid"):
        if n_rows[p] == 0 or not y[masks[p]].any():
            msg = f"the {p} period {iso(periods[p][0])} .. {iso(periods[p][1])} has " + (
                "no transactions" if n_rows[p] == 0 else "no fraud"
            )
            raise TrainingError(msg)
    x = rep.features
    cards = np.asarray(rep.card_ids, dtype=object)
    tr, va = masks["train"], masks["valid"]
    log(f"training LightGBM on {n_rows['train']:,} rows, early stopping on {n_rows['valid']:,}")
    result = train_lightgbm(
        x[tr], y[tr], rep.feature_names, x[va], y[va],
        num_boost_round=cfg.num_boost_round, card_ids_valid=cards[va],
    )  # fmt: skip
    scorer = result.scorer
    lgbm_scores = scorer.score_batch(x)
    evaluation: dict[str, dict[str, dict[str, float]]] = {}
    for p in [q for q in ("valid", "test") if q in masks]:
        mk = masks[p]
        evaluation[p] = {
            model: binary_metrics(scores[mk], y[mk], cards[mk], 100)
            for model, scores in (
                ("lightgbm", lgbm_scores), ("river", rep.river), ("hst", rep.hst),
                ("rules", rep.rules),
            )
        }  # fmt: skip

    metadata: dict[str, Any] = {
        "source": "riskstream train",
        "training_window": {"start": iso(periods["train"][0]), "end": iso(periods["train"][1])},
        "validation_window": {"start": iso(periods["valid"][0]), "end": iso(periods["valid"][1])},
        "test_window": (
            {"start": iso(periods["test"][0]), "end": iso(periods["test"][1])}
            if "test" in periods
            else None
        ),
        "metrics": result.metrics,
        "evaluation": evaluation,
        "n_rows": n_rows,
        "data_fingerprint": fingerprint,
        "rule_set": rule_set,
        "params": result.params,
        "reference_histograms": {
            **drift_reference(x[tr], rep.feature_names, lgbm_scores[va], float(y[tr].mean())),
            "score_rows": "validation",
            "features_rows": "training",
        },
        "replay": {
            "events": len(rep.event_ids),
            "seconds": rep.seconds,
            "labels": rep.labels_applied,
            "label_lag_ms": cfg.label_lag_ms,
            "warmup_ms": warmup,
            "dead_letters": rep.dead,
        },  # fmt: skip
    }
    registry = ModelRegistry(settings.models_dir)
    version = registry.register(scorer, metadata)
    if cfg.promote:
        registry.promote(version)
    return TrainingReport(
        version=version,
        promoted=cfg.promote,
        metrics=evaluation,
        n_rows=n_rows,
        replay_events_per_second=len(rep.event_ids) / max(rep.seconds, 1e-9),
        seconds=time.perf_counter() - t_start,
        metadata=metadata,
    )
