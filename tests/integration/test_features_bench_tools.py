"""The feature benchmark and profiler run end to end on a small stream (they must not rot)."""

from __future__ import annotations

import pytest
import redis

from features import bench, profile

pytestmark = pytest.mark.integration


def test_bench_reports_both_modes_and_one_round_trip(redis_client: redis.Redis) -> None:
    r = bench.measure(redis_client, n_events=4000, warm_events=2000)
    assert r["features_events_per_second"] > 0
    assert r["features_events_per_second_one_at_a_time"] > 0
    assert r["features_round_trips_per_batch"] == 1.0
    assert r["features_count"] == 31.0
    assert r["features_bytes_per_card"] > 0


@pytest.mark.parametrize("ahead", [False, True])
def test_profile_splits_server_and_wall_time(redis_client: redis.Redis, ahead: bool) -> None:
    r = profile.profile(redis_client, profile.SPECS["card only"], ahead, warm=2000, timed=2000)
    assert r["kinds"] == 1.0 and r["features"] == 14.0
    assert 0 < r["server_ms_per_batch"] <= r["wall_ms_per_batch"]
