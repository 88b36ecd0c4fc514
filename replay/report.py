"""A backtest report as one self-contained HTML page (plots embedded as PNG) plus its JSON."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import precision_recall_curve  # noqa: E402

_KEYS_FIRST = (
    "auc_roc", "average_precision", "card_precision_at_100", "oracle_card_precision_at_100",
    "n_test", "n_test_frauds", "events_per_second",
)  # fmt: skip


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _pr_curve(y: np.ndarray[Any, Any], s: np.ndarray[Any, Any], ap: float) -> str:
    p, r, _ = precision_recall_curve(y, s)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(r, p, color="#c0392b")
    ax.set(xlabel="recall", ylabel="precision", title=f"Precision-recall (AP {ap:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    return _png(fig)


def _score_hist(y: np.ndarray[Any, Any], s: np.ndarray[Any, Any]) -> str:
    fig, ax = plt.subplots(figsize=(5, 4))
    bins = np.linspace(0, 1, 41).tolist()
    ax.hist(s[y == 0], bins=bins, alpha=0.6, density=True, label="legitimate", color="#2c7fb8")
    ax.hist(s[y == 1], bins=bins, alpha=0.6, density=True, label="fraud", color="#c0392b")
    ax.set(xlabel="score", ylabel="density", title="Score distribution by label", yscale="log")
    ax.legend()
    return _png(fig)


def _per_day(frame: pd.DataFrame) -> str:
    day = pd.to_datetime(frame["ts"], unit="ms", utc=True).dt.date
    counts = pd.crosstab(day, frame["decision"])
    fig, ax = plt.subplots(figsize=(6, 4))
    colors = {"allow": "#2ca25f", "review": "#feb24c", "block": "#de2d26"}
    bottom = np.zeros(len(counts))
    for col in ("review", "block"):
        if col in counts:
            ax.bar([str(d) for d in counts.index], counts[col], bottom=bottom, label=col,
                   color=colors[col])  # fmt: skip
            bottom += counts[col].to_numpy()
    ax.set(title="Alerts per day (review + block)", ylabel="decisions")
    ax.tick_params(axis="x", rotation=45)
    ax.legend()
    return _png(fig)


def _barh(values: Mapping[str, float], title: str, color: str) -> str:
    items = sorted(values.items(), key=lambda kv: kv[1])[-20:]
    fig, ax = plt.subplots(figsize=(6, max(2.5, 0.3 * len(items) + 1)))
    ax.barh([k for k, _ in items], [v for _, v in items], color=color)
    ax.set(title=title)
    return _png(fig)


def render_html(
    report: Mapping[str, Any],
    frame: pd.DataFrame,
    feature_importance: Mapping[str, float],
    rule_hits: Mapping[str, int],
) -> str:
    """The report page; ``frame`` has ts, score, decision and is_fraud of every test transaction."""
    y = frame["is_fraud"].to_numpy().astype(int)
    s = frame["score"].to_numpy(dtype=float)
    figures: list[tuple[str, str]] = []
    if 0 < y.sum() < len(y):
        figures.append(
            ("Precision-recall curve", _pr_curve(y, s, float(report["average_precision"])))
        )
        figures.append(("Score distribution", _score_hist(y, s)))
    figures.append(("Decisions per day", _per_day(frame)))
    if rule_hits:
        figures.append(("Rule hits", _barh(rule_hits, "Rule hits in the test period", "#756bb1")))
    if feature_importance:
        figures.append(
            ("Feature importance", _barh(feature_importance, "LightGBM gain", "#31a354"))
        )
    keys = [k for k in _KEYS_FIRST if k in report] + sorted(
        k for k in report if k not in _KEYS_FIRST
    )
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(_fmt(report[k]))}</td></tr>" for k in keys
    )
    imgs = "".join(
        f'<figure><img alt="{html.escape(t)}" src="data:image/png;base64,{b}"/>'
        f"<figcaption>{html.escape(t)}</figcaption></figure>"
        for t, b in figures
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>riskstream backtest</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 2rem; }}
th, td {{ padding: .3rem .8rem; border-bottom: 1px solid #ddd; text-align: left; }}
td {{ font-variant-numeric: tabular-nums; }}
figure {{ display: inline-block; margin: 0 1rem 1rem 0; vertical-align: top; }}
figcaption {{ color: #666; font-size: .9rem; }}
</style></head><body>
<h1>riskstream backtest</h1>
<table>{rows}</table>
{imgs}
</body></html>
"""


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.4f}"
    if isinstance(v, Sequence) and not isinstance(v, str):
        return ", ".join(map(str, v))
    return str(v)
