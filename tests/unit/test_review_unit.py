"""Review app pieces without servers: doctests, percentiles, the plot, no PAN on a page."""

from __future__ import annotations

import doctest
import importlib

import pytest

from engine.review.plot import timeline
from engine.review.service import percentile
from engine.review.web import _finalize, _templates


@pytest.mark.parametrize(
    "module",
    ["engine.review.index", "engine.review.service", "engine.review.plot", "engine.review.users"],
)
def test_doctests(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0


def test_percentile_is_monotonic_and_bounded() -> None:
    hist = {"edges": [1.0, 2.0, 5.0, 9.0], "counts": [10, 20, 30, 30, 10]}
    values = [-5.0, 0.0, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 9.0, 50.0]
    ps = [percentile(hist, v) for v in values]
    assert all(p is not None and 0.0 <= p <= 100.0 for p in ps)
    assert ps == sorted(ps)  # type: ignore[type-var]
    assert percentile(hist, float("nan")) is None
    assert percentile({"edges": [], "counts": [0]}, 1.0) is None


def test_timeline_escapes_and_marks_the_case() -> None:
    rows = [{"ts": 1_000 * i, "amount": 10.0 * (i + 1), "decision": "<b>x</b>",
             "event_id": f"e{i}", "score": 0.1} for i in range(5)]  # fmt: skip
    svg = timeline(rows, "e3")
    assert "<b>" not in svg and "&lt;b&gt;" in svg
    assert svg.count('stroke-width="2"') == 1


def test_no_card_number_reaches_a_page() -> None:
    pan = "4111 1111 1111 1111"
    assert "4111" not in _finalize(f"note: {pan}")
    page = _templates().get_template("error.html").render(message=f"card {pan}", user=None)
    assert pan not in page and "[REDACTED-PAN]" in page


def test_the_packed_history_command_is_the_script_call() -> None:
    """The live path packs the history script's EVAL itself; the bytes must be what the
    generic packing of its KEYS/ARGV gives: per card and merchant key (in order of first
    appearance) the number of entries, then the entries oldest first, ``keep`` trimming
    included."""
    from types import SimpleNamespace

    import orjson

    from engine.review.store import (
        HIST_PREFIX,
        HISTORY_SCRIPT,
        HISTORY_TTL_SECONDS,
        history_command,
    )
    from features import resp

    decisions = [
        SimpleNamespace(event_id=f"e{i}", ts=1_700_000_000_000 + i, amount=i * 1.5,
                        score=i / 10, decision="allow", card_id=f"c{i % 3}")
        for i in range(10)
    ]  # fmt: skip
    records = [{"merchant_id": f"m{i % 2}" if i else None, "currency": "EUR"} for i in range(10)]
    for keep in (25, 2):
        lists: dict[str, list[bytes]] = {}
        for d, r in zip(decisions, records, strict=True):
            merchant = r["merchant_id"] or ""
            entry = orjson.dumps({"event_id": d.event_id, "ts": d.ts, "amount": d.amount,
                                  "score": d.score, "decision": d.decision,
                                  "card_id": d.card_id, "merchant_id": merchant,
                                  "currency": "EUR"})  # fmt: skip
            lists.setdefault(f"{HIST_PREFIX}card:{d.card_id}", []).append(entry)
            lists.setdefault(f"{HIST_PREFIX}merchant:{merchant}", []).append(entry)
        args: list[bytes | int] = [keep, HISTORY_TTL_SECONDS]
        for entries in lists.values():
            args += [len(entries[-keep:]), *entries[-keep:]]
        assert history_command(decisions, records, keep) == resp.command(
            "EVAL", HISTORY_SCRIPT, len(lists), *lists, *args
        )
