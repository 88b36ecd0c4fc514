"""CLI misuse prints one clear line and exits 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["bogus"], "No such command"),
        (["simulate"], "--out"),
        (["simulate", "--out", "x.txt"], ".parquet"),
        (["simulate", "--out", "x.csv", "--days", "0"], "--days"),
        (["simulate", "--out", "x.csv", "--days", "many"], "--days"),
    ],
)
def test_misuse_is_one_line(args: list[str], needle: str) -> None:
    res = run(*args)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("riskstream: error:")
    assert needle in lines[0]
    assert "Traceback" not in res.stderr


def test_help_lists_the_commands() -> None:
    res = run("--help")
    assert res.returncode == 0
    for cmd in ("up", "worker", "simulate", "demo", "bench"):
        assert cmd in res.stdout


def test_rules_check_exits_non_zero_on_an_invalid_directory(tmp_path: object) -> None:
    res = run("rules", "check", "/nonexistent-rules-dir")
    assert res.returncode == 1
    assert "Traceback" not in res.stderr


def test_a_value_error_of_our_own_code_is_one_line_not_a_traceback() -> None:
    from engine.cli import _raised_in
    from replay.merge import parse_duration

    with pytest.raises(ValueError) as ours:
        parse_duration("soon")
    assert _raised_in(ours.value, ("replay",))
    with pytest.raises(ValueError) as theirs:
        int("soon")
    assert not _raised_in(theirs.value, ("replay", "engine"))


def test_a_worker_without_its_broker_says_so_in_one_line(tmp_path: object) -> None:
    """It waits ``RISKSTREAM_STARTUP_WAIT_SECONDS`` for the broker, then one line, exit 2 (it was
    30 s of librdkafka's connection log, then a traceback)."""
    import os

    res = subprocess.run(
        [sys.executable, "-m", "engine.cli", "worker"], capture_output=True, text=True,
        timeout=60, env={**os.environ, "RISKSTREAM_STARTUP_WAIT_SECONDS": "2",
                         "RISKSTREAM_DATA_DIR": str(tmp_path),
                         "RISKSTREAM_KAFKA_BOOTSTRAP": "127.0.0.1:1"},
    )  # fmt: skip
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [res.stderr.strip()]  # one line, nothing else
    assert res.stderr.startswith("riskstream: error: no Kafka broker answered at 127.0.0.1:1")


def test_no_redis_is_one_clear_error_after_the_wait() -> None:
    import time

    import redis

    from engine.build import RedisUnavailableError, check_server, wait_for_redis

    client = redis.Redis(host="127.0.0.1", port=2, socket_connect_timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(RedisUnavailableError, match="no Redis server answered at 127.0.0.1:2"):
        wait_for_redis(client, 1.5)
    assert 1.5 <= time.monotonic() - t0 < 10
    with pytest.raises(RedisUnavailableError, match="RISKSTREAM_REDIS_URL"):
        check_server(client)
