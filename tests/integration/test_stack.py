"""The embedded stack starts real servers on free ports and stops them cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import redis
from confluent_kafka.admin import AdminClient

from engine.stack import EmbeddedStack

pytestmark = pytest.mark.integration


def test_stack_serves_redis_and_kafka_then_stops() -> None:
    with EmbeddedStack() as s:
        assert redis.Redis.from_url(s.redis_url).ping()
        meta = AdminClient({"bootstrap.servers": s.kafka_bootstrap}).list_topics(timeout=10)
        assert meta.brokers
        procs = list(s._procs)
    assert all(p.poll() is not None for p in procs)


def test_riskstream_up_prints_settings_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "up", "--partitions", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    env: dict[str, str] = {}
    deadline = time.monotonic() + 60
    while len(env) < 2 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("export "):
            key, value = line.removeprefix("export ").strip().split("=", 1)
            env[key] = value
    assert set(env) == {"RISKSTREAM_KAFKA_BOOTSTRAP", "RISKSTREAM_REDIS_URL"}
    assert redis.Redis.from_url(env["RISKSTREAM_REDIS_URL"]).ping()
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(30) == 0
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(env["RISKSTREAM_REDIS_URL"], socket_connect_timeout=1).ping()
