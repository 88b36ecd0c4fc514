"""``riskstream drift report``: the worker's drift statistics over a file or the live hourly log,
as ``drift.json`` and a self-contained ``drift.html``.

Sources, both reduced to bin counts per period on the model's reference grid
(:class:`models.drift.DriftReference`), so the numbers are the worker's own:

* ``--transactions FILE``: a feature log (``decisions.parquet`` of ``riskstream replay --out``:
  features, score and decision per transaction) is read as is; any other transactions file is
  first replayed in-process through the pipeline (scratch Redis database, the model scoring) to
  make one.
* ``--since T``: the hourly counts every worker adds to Redis (``rs:drift:hist:<model>:<hour>``,
  see :mod:`engine.drift`): all workers together, from ``T`` on.
"""

from __future__ import annotations

import html
import json
import math
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import redis

from engine.drift import CALENDAR_FEATURES, HIST_PREFIX, parse_hour
from engine.settings import Settings
from models.drift import DECISIONS, HOUR_MS, SCORE, DriftReference, HourCounts
from models.registry import ModelRegistry
from replay.quarantine import REJECTED_FILE, Quarantine, reasons_text

DAY_MS = 24 * HOUR_MS
#: The statistics of a period with fewer rows are left out of "PSI over time" (too noisy).
MIN_PERIOD_ROWS = 100


class DriftReportError(ValueError):
    """Bad input for the report (one line for the CLI)."""


def reference_for(settings: Settings, version: str | None) -> tuple[str, DriftReference]:
    """The model's version (default: the champion) and its drift reference."""
    registry = ModelRegistry(settings.models_dir)
    version = version or registry.champion_version()
    if version is None:
        msg = f"no champion in {settings.models_dir}; name a model with --model"
        raise DriftReportError(msg)
    meta = registry.metadata(version)
    ref = DriftReference.from_metadata(
        meta.get("reference_histograms"), meta["feature_names"], version, CALENDAR_FEATURES
    )
    if not ref.columns:
        msg = f"model {version} has no reference histograms (retrain it with riskstream train)"
        raise DriftReportError(msg)
    return version, ref


# ------------------------------------------------------------------------------------- sources


def _column(log: pd.DataFrame, name: str) -> np.ndarray[Any, Any]:
    for col in (f"feature_{name}", name):
        if col in log.columns:
            values: np.ndarray[Any, Any] = log[col].to_numpy(np.float64)
            return values
    msg = f"the feature log has no column for feature {name!r}"
    raise DriftReportError(msg)


def counts_of_log(ref: DriftReference, log: pd.DataFrame, period_ms: int) -> dict[int, HourCounts]:
    """Bin counts per period (epoch ms // period_ms) of a feature log."""
    values = np.column_stack([_column(log, n) for n in ref.feature_names] + (
        [np.where(log["mode"].to_numpy() == "normal", log["score"].to_numpy(np.float64), np.nan)
         if "mode" in log.columns else log["score"].to_numpy(np.float64)]
        if ref.has_score else []
    ))  # fmt: skip
    bins = ref.bin_batch(values)
    periods = log["ts"].to_numpy(np.int64) // period_ms
    codes = {d: i for i, d in enumerate(DECISIONS)}
    dec = log["decision"].map(codes).fillna(0).to_numpy(np.int64)
    out = {}
    for p in np.unique(periods).tolist():
        mask = periods == p
        hc = HourCounts(int(p), ref.counts(bins[:, mask]), int(mask.sum()))
        hc.decisions = np.bincount(dec[mask], minlength=len(DECISIONS))
        out[int(p)] = hc
    return out


def feature_log(
    path: Path,
    settings: Settings,
    version: str,
    scratch_db: int,
    strict: bool = False,
    out: Path | None = None,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """``path`` if it is a feature log (a replay's ``decisions.parquet``), else the feature log
    of replaying it in-process; and the rows that replay quarantined, by reason (written to
    ``out/rejected.parquet``; ``strict`` raises at the first instead)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.suffix == ".parquet":
        try:
            names = set(pq.read_schema(path).names)
        except pa.ArrowException:  # not Parquet at all: the replay below says so in one line
            names = set()
        if {"score", "decision", "ts"} <= names:
            return pd.read_parquet(path), {}
    from engine.build import build_service
    from replay.replay import ReplayOptions, ReplaySink, replay_inprocess
    from replay.training import claim_scratch, scratch_url

    url = scratch_url(settings.redis_url, scratch_db)
    client = redis.Redis.from_url(url)
    claim_scratch(client, settings.redis_url, url)
    with tempfile.TemporaryDirectory(prefix="drift-report-") as tmp:
        scratch = settings.model_copy(update={"redis_url": url, "data_dir": Path(tmp)})
        service = build_service(
            scratch, sink=ReplaySink(settings.topic_dead_letter), client=client,
            use_registry=False, live=False,
        )  # fmt: skip
        service.pipeline.champion = ModelRegistry(settings.models_dir).load(version)
        opts = ReplayOptions(transactions=path, out=Path(tmp) / "out", progress=False,
                             strict=strict)  # fmt: skip
        try:
            replay_inprocess(opts, scratch, service=service)
            quarantine = Quarantine()
            quarantine.add(pd.read_parquet(Path(tmp) / "out" / REJECTED_FILE))
            if out is not None:
                quarantine.write(out)
            return pd.read_parquet(Path(tmp) / "out" / "decisions.parquet"), quarantine.by_reason()
        finally:
            client.flushdb()


def counts_since(
    client: redis.Redis, ref: DriftReference, version: str, since_ms: int, until_ms: int | None
) -> dict[int, HourCounts]:
    """The hourly counts the workers wrote to Redis for ``version``, from ``since_ms`` on."""
    out = {}
    for key in client.scan_iter(match=f"{HIST_PREFIX}{version}:*", count=1000):
        hour = int(key.decode().rsplit(":", 1)[1])
        if hour * HOUR_MS + HOUR_MS <= since_ms or (
            until_ms is not None and hour * HOUR_MS >= until_ms
        ):
            continue
        raw: Mapping[bytes, bytes] = client.hgetall(key)  # type: ignore[assignment]  # bytes client
        hc = parse_hour(ref, raw)
        hc.hour = hour
        out[hour] = hc
    return out


# -------------------------------------------------------------------------------------- report


def _num(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), 6)


def build_report(
    ref: DriftReference, periods: Mapping[int, HourCounts], period_ms: int, source: str
) -> dict[str, Any]:
    """drift.json: overall and per-period statistics per column, columns sorted by PSI."""
    if not periods:
        msg = f"no transactions to report on ({source})"
        raise DriftReportError(msg)
    total = ref.empty_counts()
    dec = np.zeros(len(DECISIONS), dtype=np.int64)
    for hc in periods.values():
        total += hc.counts
        dec += hc.decisions
    n = sum(hc.n for hc in periods.values())
    overall = ref.stats(total, n, dict(zip(DECISIONS, dec.tolist(), strict=True)))
    shares = ref.shares(total)
    over_time = []
    for p in sorted(periods):
        hc = periods[p]
        st = ref.stats(hc.counts, hc.n, None, MIN_PERIOD_ROWS)
        over_time.append((p, hc.n, st))
    columns: list[dict[str, Any]] = []
    for i, name in enumerate(ref.names):
        columns.append({
            "name": "score" if name == SCORE else name,
            "kind": "score" if name == SCORE else "feature",
            "psi": _num(overall.psi[i]), "ks": _num(overall.ks[i]),
            "missing_ratio": _num(overall.missing_ratio[i]),
            "histogram": shares[i],
            "over_time": [
                {"start": _iso(p * period_ms), "n": k, "psi": _num(st.psi[i]), "ks": _num(st.ks[i])}
                for p, k, st in over_time
            ],
        })  # fmt: skip
    columns.sort(key=lambda c: -(c["psi"] if c["psi"] is not None else -1.0))
    return {
        "model": ref.version,
        "source": source,
        "transactions": n,
        "period": "hour" if period_ms == HOUR_MS else "day",
        "from": _iso(min(periods) * period_ms),
        "until": _iso((max(periods) + 1) * period_ms),
        "decision_shares": {k: _num(v) for k, v in overall.decisions.items()},
        "training_fraud_rate": _num(ref.fraud_rate),
        "columns": columns,
    }


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="minutes")


def _hist_png(col: Mapping[str, Any]) -> str:
    import matplotlib.pyplot as plt

    from replay.report import _png

    h = col["histogram"]
    edges = h["edges"]
    labels = (
        [f"≤{edges[0]:.3g}"] + [f"≤{e:.3g}" for e in edges[1:]] + [f">{edges[-1]:.3g}"]
        if edges else ["all"]
    )  # fmt: skip
    ref, cur = list(h["reference"]), list(h["current"])
    if h["reference_missing"] or h["current_missing"]:
        labels.append("missing")
        ref.append(h["reference_missing"])
        cur.append(h["current_missing"])
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(5.2, 2.6))
    ax.bar(x - 0.2, ref[: len(x)] + [0.0] * (len(x) - len(ref)), 0.4, label="reference",
           color="#8c96a8")  # fmt: skip
    ax.bar(x + 0.2, cur[: len(x)] + [0.0] * (len(x) - len(cur)), 0.4, label="current",
           color="#d9534f", alpha=0.85)  # fmt: skip
    ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("share")
    ax.legend(fontsize=7)
    return _png(fig)


def _psi_png(col: Mapping[str, Any]) -> str:
    import matplotlib.pyplot as plt

    from replay.report import _png

    pts = [(pd.Timestamp(p["start"]), p["psi"]) for p in col["over_time"] if p["psi"] is not None]
    fig, ax = plt.subplots(figsize=(4.2, 2.6))
    if pts:
        ax.plot([t for t, _ in pts], [v for _, v in pts], marker="o", ms=3, color="#2c7fb8")
    ax.axhline(0.25, color="#d9534f", ls="--", lw=1, label="alert 0.25")
    ax.axhline(0.1, color="#f0ad4e", ls=":", lw=1, label="0.1")
    ax.set_ylabel("PSI")
    ax.tick_params(axis="x", labelsize=7, rotation=30)
    ax.legend(fontsize=7)
    return _png(fig)


def render_html(report: Mapping[str, Any]) -> str:
    """One page, images inline (no network): a summary table, then per column (most drifted
    first) the reference vs current histogram and the PSI per period."""
    esc = html.escape

    def fmt(v: float | None) -> str:
        return "–" if v is None else f"{v:.3f}"

    def level(v: float | None) -> str:
        return "" if v is None else "high" if v > 0.25 else "mid" if v > 0.1 else "low"

    rows = "".join(
        f'<tr class="{level(c["psi"])}"><td><a href="#c{i}">{esc(c["name"])}</a></td>'
        f"<td>{fmt(c['psi'])}</td><td>{fmt(c['ks'])}</td><td>{fmt(c['missing_ratio'])}</td></tr>"
        for i, c in enumerate(report["columns"])
    )
    sections = "".join(
        f'<section id="c{i}"><h2>{esc(c["name"])} <small>PSI {fmt(c["psi"])} · KS '
        f"{fmt(c['ks'])} · missing {fmt(c['missing_ratio'])}</small></h2>"
        f'<img alt="reference vs current histogram of {esc(c["name"])}" '
        f'src="data:image/png;base64,{_hist_png(c)}">'
        f'<img alt="PSI per {esc(report["period"])} of {esc(c["name"])}" '
        f'src="data:image/png;base64,{_psi_png(c)}"></section>'
        for i, c in enumerate(report["columns"])
    )
    shares = ", ".join(f"{k} {fmt(v)}" for k, v in report["decision_shares"].items())
    bad = report.get("quarantined") or {}
    quarantined = (
        f" · {sum(bad.values()):,} rows quarantined ({esc(reasons_text(bad))}, {REJECTED_FILE})"
        if bad else ""
    )  # fmt: skip
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>riskstream drift report</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}
table{{border-collapse:collapse}}
td,th{{padding:.25em .8em;border-bottom:1px solid #ddd;text-align:right}}
td:first-child,th:first-child{{text-align:left}}tr.high td{{background:#f8d7da}}
tr.mid td{{background:#fff3cd}}section{{margin:1.5em 0}}img{{margin-right:1em}}
small{{color:#666;font-weight:normal}}
</style></head><body>
<h1>Drift report</h1>
<p>Model <b>{esc(str(report["model"]))}</b> · {esc(report["source"])} ·
{report["transactions"]:,} transactions from {esc(report["from"])} to {esc(report["until"])}
· decisions: {esc(shares)}{quarantined}</p>
<p>PSI: population stability index against the model's training reference (&lt; 0.1 stable,
0.1–0.25 some shift, &gt; 0.25 a real change; the alert threshold). KS: largest gap between the
reference and current cumulative distributions. Columns are sorted by PSI.</p>
<table><tr><th>column</th><th>PSI</th><th>KS</th><th>missing</th></tr>{rows}</table>
{sections}
</body></html>
"""


def write_report(report: Mapping[str, Any], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    j, h = out / "drift.json", out / "drift.html"
    j.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    h.write_text(render_html(report), encoding="utf-8")
    return j, h


def period_for(span_ms: int) -> int:
    """Hours for up to three days, else days."""
    return HOUR_MS if span_ms <= 3 * DAY_MS else DAY_MS
