"""Backtest rule sets over a labelled transactions file, through the real pipeline.

The file is replayed in event-time order through a :class:`~engine.service.ScoringService` built
on a fresh feature state (an embedded Valkey, or a unique key prefix on ``RISKSTREAM_REDIS_URL``
that is deleted afterwards), so each transaction's features are exactly what a live worker would
have computed. The pipeline's rule stage evaluates the rule set under test *and* the set it is
compared with on the same batch (same records, same feature matrix), recording every hit.

Labels: the file's ``is_fraud`` column, or a labels file (``event_id``, ``is_fraud``, optional
``ts`` = when the label became known; events without a label are legitimate). ``label_delay``
models label maturity: a fraud label counts only if it would be known by the end of the file
(``ts + delay <= last ts``, or the label's own ``ts`` with a labels file); later transactions are
*immature* and left out of precision and recall (they still count as hits).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from replay.quarantine import final_truth

DAY_MS = 86_400_000


class _Recorder:
    """A ``RuleSetLike`` that evaluates several rule sets per batch and keeps every hit.

    The pipeline decides with the first set; the others are evaluated on identical inputs.
    """

    def __init__(self, sets: Sequence[Any]) -> None:
        self.sets = list(sets)
        self.event_ids: list[str] = []
        #: Per set: rule id -> list of row numbers (into ``event_ids``) where it fired.
        self.hits: list[dict[str, list[int]]] = [{} for _ in self.sets]

    @property
    def version(self) -> str:
        return str(self.sets[0].version)

    def evaluate_batch(
        self,
        events: Sequence[Mapping[str, Any]],
        features: npt.NDArray[np.float64],
        feature_names: Sequence[str],
    ) -> list[list[Any]]:
        base = len(self.event_ids)
        self.event_ids.extend(str(e["event_id"]) for e in events)
        first: list[list[Any]] = []
        for k, rs in enumerate(self.sets):
            out = rs.evaluate_batch(events, features, feature_names)
            rec = self.hits[k]
            for i, hits in enumerate(out):
                for h in hits:
                    rec.setdefault(h.rule_id, []).append(base + i)
            if k == 0:
                first = out
        return first


@dataclass
class RuleStats:
    id: str
    action: str
    hits: int
    hit_rate: float
    true_positives: int
    precision: float
    recall: float
    alerts_per_day: float

    def to_dict(self) -> dict[str, Any]:
        return {k: _clean(v) for k, v in self.__dict__.items()}


@dataclass
class SetStats:
    directory: str
    version: str
    rules: list[RuleStats]
    flagged: int = 0
    flagged_precision: float = float("nan")
    flagged_recall: float = float("nan")
    evaluation_errors: int = 0
    per_event_rules: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "directory": self.directory,
            "version": self.version,
            "flagged": self.flagged,
            "flagged_precision": _clean(self.flagged_precision),
            "flagged_recall": _clean(self.flagged_recall),
            "evaluation_errors": self.evaluation_errors,
            "per_event_rules": self.per_event_rules,
            "rules": [r.to_dict() for r in self.rules],
        }


@dataclass
class BacktestReport:
    transactions: int
    days: float
    frauds: int
    mature: int
    label_source: str
    result: SetStats
    against: SetStats | None = None
    diff: dict[str, Any] = field(default_factory=dict)
    dead_letters: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    labels_quarantined: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "quarantined": self.quarantined,
            "labels_quarantined": self.labels_quarantined,
            "transactions": self.transactions,
            "days": round(self.days, 3),
            "frauds": self.frauds,
            "mature_transactions": self.mature,
            "label_source": self.label_source,
            "dead_letters": self.dead_letters,
            "rule_set": self.result.to_dict(),
            "against": self.against.to_dict() if self.against else None,
            "diff": self.diff,
        }


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, float):
        return round(v, 6)
    return v


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _labels(
    df: pd.DataFrame, labels: pd.DataFrame | None, delay_ms: int | None
) -> tuple[dict[str, bool], dict[str, bool], str]:
    """(is_fraud by event id, mature by event id, description of the label source)."""
    ids = df["event_id"].astype(str).to_numpy()
    ts = df["ts"].to_numpy(dtype=np.int64)
    end = int(ts.max()) if len(ts) else 0
    if labels is not None:
        lab = labels.assign(event_id=labels["event_id"].astype(str))
        truth = final_truth(lab, pd.Series(ids))
        fraud = dict(zip(ids.tolist(), truth.tolist(), strict=True))
        mature = dict.fromkeys(ids.tolist(), True)
        if "ts" in lab.columns:  # an event whose final label came after the file's end
            last = lab.sort_values("ts", kind="stable").drop_duplicates("event_id", keep="last")
            for eid in last.loc[last["ts"].to_numpy(dtype=np.int64) > end, "event_id"]:
                if eid in mature:
                    mature[eid] = False
        return fraud, mature, "labels file"
    if "is_fraud" not in df.columns:
        msg = "the transactions file has no is_fraud column; pass --labels FILE"
        raise ValueError(msg)
    y = df["is_fraud"].astype(bool).to_numpy()
    fraud = dict(zip(ids.tolist(), y.tolist(), strict=True))
    if delay_ms:
        ok = ts + delay_ms <= end
        return (
            fraud,
            dict(zip(ids.tolist(), ok.tolist(), strict=True)),
            f"is_fraud, delay {delay_ms / DAY_MS:g}d",
        )
    return fraud, dict.fromkeys(ids.tolist(), True), "is_fraud column"


def _set_stats(
    rs: Any,
    directory: str,
    hits: Mapping[str, list[int]],
    y: npt.NDArray[np.bool_],
    mature: npt.NDArray[np.bool_],
    days: float,
) -> SetStats:
    n = len(y)
    frauds = int((y & mature).sum())
    stats: list[RuleStats] = []
    flagged = np.zeros(n, dtype=bool)
    for rule in rs.rules:
        rows = np.asarray(hits.get(rule.id, []), dtype=np.int64)
        h = len(rows)
        m = mature[rows] if h else np.zeros(0, dtype=bool)
        tp = int((y[rows] & m).sum()) if h else 0
        if rule.action in ("block", "review") and h:
            flagged[rows] = True
        stats.append(
            RuleStats(
                id=rule.id,
                action=rule.action if rule.enabled else f"{rule.action} (disabled)",
                hits=h,
                hit_rate=_ratio(h, n),
                true_positives=tp,
                precision=_ratio(tp, int(m.sum())),
                recall=_ratio(tp, frauds),
                alerts_per_day=_ratio(h, days),
            )
        )
    fm = flagged & mature
    return SetStats(
        directory=directory,
        version=rs.version,
        rules=stats,
        flagged=int(flagged.sum()),
        flagged_precision=_ratio(int((fm & y).sum()), int(fm.sum())),
        flagged_recall=_ratio(int((fm & y).sum()), frauds),
        evaluation_errors=int(rs.evaluation_errors),
        per_event_rules=sorted(rs.per_event_rules),
    )


def _diff(
    new: Any, old: Any, a: SetStats, b: SetStats, ha: Mapping[str, list[int]],
    hb: Mapping[str, list[int]], y: npt.NDArray[np.bool_],
) -> dict[str, Any]:  # fmt: skip
    ra = {r.id: r for r in new.rules}
    rb = {r.id: r for r in old.rules}
    sa = {s.id: s for s in a.rules}
    sb = {s.id: s for s in b.rules}
    changed = sorted(
        i for i in ra.keys() & rb.keys()
        if (ra[i].condition, ra[i].action, ra[i].enabled, ra[i].priority)
        != (rb[i].condition, rb[i].action, rb[i].enabled, rb[i].priority)
    )  # fmt: skip
    per_rule = {}
    for i in sorted(ra.keys() | rb.keys()):
        ea = set(ha.get(i, []))
        eb = set(hb.get(i, []))
        per_rule[i] = {
            "hits": sa[i].hits if i in sa else 0,
            "hits_against": sb[i].hits if i in sb else 0,
            "hits_delta": (sa[i].hits if i in sa else 0) - (sb[i].hits if i in sb else 0),
            "newly_hit": len(ea - eb),
            "no_longer_hit": len(eb - ea),
        }
    return {
        "added": sorted(ra.keys() - rb.keys()),
        "removed": sorted(rb.keys() - ra.keys()),
        "changed": changed,
        "flagged_delta": a.flagged - b.flagged,
        "flagged_precision_delta": _clean(a.flagged_precision - b.flagged_precision),
        "flagged_recall_delta": _clean(a.flagged_recall - b.flagged_recall),
        "rules": per_rule,
    }


@contextmanager
def _redis(redis_url: str | None) -> Iterator[tuple[Any, str]]:
    """(client, key prefix): a unique prefix on the given server, or a private embedded Valkey."""
    import redis

    if redis_url:
        client = redis.Redis.from_url(redis_url)
        prefix = f"rs:backtest:{uuid.uuid4().hex[:12]}:"
        try:
            yield client, prefix
        finally:
            keys: list[Any] = []
            for key in client.scan_iter(match=prefix + "*", count=1000):
                keys.append(key)
                if len(keys) >= 1000:
                    client.unlink(*keys)
                    keys = []
            if keys:
                client.unlink(*keys)
            client.close()
        return
    from engine.stack import EmbeddedStack

    with EmbeddedStack(with_kafka=False) as stack:
        client = redis.Redis.from_url(stack.redis_url)
        try:
            yield client, "rs:"
        finally:
            client.close()


def run_backtest(
    transactions: Path,
    rules_dir: Path,
    against_dir: Path | None = None,
    labels: Path | None = None,
    label_delay_ms: int | None = None,
    redis_url: str | None = None,
    batch_size: int = 1000,
    progress: bool = True,
    strict: bool = False,
    out: Path | None = None,
) -> BacktestReport:
    """Replay ``transactions`` through the pipeline with ``rules_dir`` (and ``against_dir``);
    bad rows go to ``out/rejected.parquet`` (``strict``: stop at the first)."""
    from engine.pipeline import Pipeline
    from engine.policy import Policy
    from engine.service import ScoringService
    from engine.settings import Settings
    from engine.sinks import NullSink
    from features.spec import DEFAULT_SPEC
    from features.store import RedisFeatureStore
    from replay.inprocess import run_inprocess
    from replay.quarantine import REJECTED_LABELS_FILE, Quarantine, load_labels, load_transactions
    from rules.loader import load_rule_set

    df, quarantine = load_transactions(transactions, strict=strict)
    if out is not None:
        quarantine.write(out)
    df = df.sort_values("ts", kind="stable").reset_index(drop=True)
    label_df = None
    bad_labels = Quarantine()
    if labels is not None:
        label_df, bad_labels = load_labels(labels, strict=strict, ts_required=False)
        if out is not None:
            bad_labels.write(out, REJECTED_LABELS_FILE)
    fraud, mature_of, source = _labels(df, label_df, label_delay_ms)
    names = [f.name for f in DEFAULT_SPEC]
    main = load_rule_set(rules_dir, names)
    other = load_rule_set(against_dir, names) if against_dir is not None else None
    recorder = _Recorder([main] if other is None else [main, other])
    with _redis(redis_url) as (client, prefix):
        store = RedisFeatureStore(client, DEFAULT_SPEC, prefix=prefix)
        store.warm_up()
        settings = Settings(rules_dir=rules_dir)
        if redis_url:
            settings = Settings(rules_dir=rules_dir, redis_url=redis_url)
        main.attach_redis(client)
        if other is not None:
            other.attach_redis(client)
        pipeline = Pipeline(store, recorder, Policy(settings.review_threshold,
                                                    settings.block_threshold))  # fmt: skip
        service = ScoringService(settings, pipeline, client, NullSink(), live=False)
        label = "backtest" + (f" ({quarantine.count:,} quarantined)" if quarantine.count else "")
        run = run_inprocess(service, df, batch_size, label=label, progress=progress)
    ids = recorder.event_ids
    y = np.array([fraud.get(i, False) for i in ids], dtype=bool)
    mature = np.array([mature_of.get(i, True) for i in ids], dtype=bool)
    ts = df["ts"].to_numpy(dtype=np.int64)
    days = max((int(ts.max()) - int(ts.min())) / DAY_MS, 1 / 24) if len(ts) else 1.0
    a = _set_stats(main, str(rules_dir), recorder.hits[0], y, mature, days)
    report = BacktestReport(
        transactions=len(ids),
        days=days,
        frauds=int((y & mature).sum()),
        mature=int(mature.sum()),
        label_source=source,
        result=a,
        dead_letters=run.dead,
        quarantined=quarantine.by_reason(),
        labels_quarantined=bad_labels.by_reason(),
    )
    if other is not None and against_dir is not None:
        b = _set_stats(other, str(against_dir), recorder.hits[1], y, mature, days)
        report.against = b
        report.diff = _diff(main, other, a, b, recorder.hits[0], recorder.hits[1], y)
    return report


def _pct(v: float) -> str:
    return "-" if not math.isfinite(v) else f"{v:.1%}"


def render(report: BacktestReport) -> Any:
    """A rich renderable: per-rule table (with the diff columns when compared)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    r = report.result
    title = (
        f"rules {r.version} over {report.transactions:,} transactions, {report.days:.1f} days, "
        f"{report.frauds:,} frauds ({report.label_source})"
    )
    t = Table(title=title)
    for col, just in (("rule", "left"), ("action", "left"), ("hits", "right"),
                      ("hit rate", "right"), ("precision", "right"), ("recall", "right"),
                      ("alerts/day", "right")):  # fmt: skip
        width = max((len(s.id) for s in r.rules), default=4) if col == "rule" else None
        t.add_column(col, justify=just, no_wrap=True, min_width=width)  # type: ignore[arg-type]
    compare = report.against is not None
    if compare:
        t.add_column("Δ hits vs " + report.against.version, justify="right")  # type: ignore[union-attr]
    for s in r.rules:
        row = [s.id, s.action, f"{s.hits:,}", f"{s.hit_rate:.3%}", _pct(s.precision),
               _pct(s.recall), f"{s.alerts_per_day:,.1f}"]  # fmt: skip
        if compare:
            d = report.diff["rules"].get(s.id, {})
            tag = " (new)" if s.id in report.diff["added"] else ""
            tag = " (changed)" if s.id in report.diff["changed"] else tag
            row.append(f"{d.get('hits_delta', 0):+,}{tag}")
        t.add_row(*row)
    if compare:
        for rid in report.diff["removed"]:
            d = report.diff["rules"][rid]
            t.add_row(rid, "(removed)", "0", "-", "-", "-", "-", f"{d['hits_delta']:+,}")
    lines = [
        f"block/review rules flag {r.flagged:,} transactions: precision "
        f"{_pct(r.flagged_precision)}, recall {_pct(r.flagged_recall)}"
    ]
    if compare and report.against is not None:
        b = report.against
        lines.append(
            f"against {b.version} ({b.directory}): flags {b.flagged:,}, precision "
            f"{_pct(b.flagged_precision)}, recall {_pct(b.flagged_recall)}"
        )
    if r.per_event_rules:
        lines.append(f"evaluated per event by CEL: {', '.join(r.per_event_rules)}")
    return Group(t, *(Text(x) for x in lines))
