"""The arithmetic of the live bench's figures (no servers): doctests, quantiles, CPU budget."""

from __future__ import annotations

import doctest
import math

from replay import live_bench
from replay.live_bench import cpu_budget, quantile


def test_doctests() -> None:
    result = doctest.testmod(live_bench)
    assert result.attempted > 0 and result.failed == 0


def test_quantile_interpolates_inside_the_bucket() -> None:
    le = {0.01: 50.0, 0.1: 90.0, 1.0: 100.0, float("inf"): 100.0}
    assert quantile(le, 0.5) == 0.01
    assert math.isclose(quantile(le, 0.7), 0.01 + 0.09 * 0.5)
    assert math.isnan(quantile({}, 0.5))


def test_cpu_budget_adds_every_process_and_caps_the_rate_by_the_cores() -> None:
    cores = {"cpu_cores_workers": 0.90, "cpu_cores_redis": 0.24, "cpu_cores_broker": 0.13,
             "cpu_cores_producer": 0.09}  # fmt: skip
    b = cpu_budget(cores, 10_867.0, 2)
    assert math.isclose(b["core_us_per_event"], sum(cores.values()) / 10_867.0 * 1e6)
    assert math.isclose(b["core_us_per_event_workers"], 0.90 / 10_867.0 * 1e6)
    # the rate at which these processes would use both cores
    assert math.isclose(b["cpu_bound_events_per_second"], 10_867.0 * 2 / sum(cores.values()))
    assert 15_000 < b["cpu_bound_events_per_second"] < 17_000
    assert math.isnan(cpu_budget({}, 1.0, 2)["cpu_bound_events_per_second"])
