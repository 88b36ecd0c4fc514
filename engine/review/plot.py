"""A small inline SVG timeline of recent transactions (no JavaScript, no CDN, no matplotlib).

Each transaction is a dot at (time, amount on a log scale), coloured by decision; the case under
review is ringed.

>>> svg = timeline([{"ts": 1_000, "amount": 10.0, "decision": "allow", "event_id": "a"}], "a")
>>> svg.startswith("<svg") and "circle" in svg
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any

COLOURS = {"allow": "#2e7d32", "review": "#ef6c00", "block": "#c62828"}


def timeline(
    rows: Sequence[Mapping[str, Any]], current: str, width: int = 460, height: int = 120
) -> str:
    if not rows:
        return '<p class="muted">no recent transactions recorded</p>'
    pad_l, pad_r, pad_t, pad_b = 46, 8, 8, 20
    ts = [int(r["ts"]) for r in rows]
    amounts = [max(float(r["amount"]), 0.01) for r in rows]
    t0, t1 = min(ts), max(ts)
    a0, a1 = math.log10(min(amounts)), math.log10(max(amounts))
    if t1 == t0:
        t0, t1 = t0 - 1, t1 + 1
    if a1 - a0 < 1e-9:
        a0, a1 = a0 - 0.5, a1 + 0.5
    w, h = width - pad_l - pad_r, height - pad_t - pad_b

    def xy(t: int, a: float) -> tuple[float, float]:
        y = pad_t + (1 - (math.log10(a) - a0) / (a1 - a0)) * h
        return (pad_l + (t - t0) / (t1 - t0) * w, y)

    parts = [
        f'<svg class="timeline" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        'role="img" aria-label="recent transactions: amount over time">',
        f'<line x1="{pad_l}" y1="{pad_t + h}" x2="{pad_l + w}" y2="{pad_t + h}" stroke="#999"/>',
        f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{pad_t + h}" stroke="#999"/>',
        f'<text x="2" y="{pad_t + 8}" font-size="9">{10**a1:,.0f}</text>',
        f'<text x="2" y="{pad_t + h}" font-size="9">{10**a0:,.2f}</text>',
        f'<text x="{pad_l}" y="{height - 4}" font-size="9">{_day(t0)}</text>',
        f'<text x="{pad_l + w}" y="{height - 4}" font-size="9" text-anchor="end">{_day(t1)}</text>',
    ]
    for r, t, a in zip(rows, ts, amounts, strict=True):
        x, y = xy(t, a)
        colour = COLOURS.get(str(r.get("decision")), "#555")
        score = float(r.get("score", 0))
        title = escape(f"{_day(t)} {a:,.2f} {r.get('decision')} score {score:.2f}")
        ring = ' stroke="#000" stroke-width="2"' if r.get("event_id") == current else ""
        size = 5 if ring else 3.5
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{size}" fill="{colour}"{ring}>'
            f"<title>{title}</title></circle>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _day(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%m-%d %H:%M")
