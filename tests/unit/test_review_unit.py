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
