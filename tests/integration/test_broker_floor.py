"""The broker floor reads every paced message of each round, and the CLI writes the rounds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from replay.broker_floor import broker_floor

pytestmark = pytest.mark.integration


def test_each_round_receives_every_partitions_messages_on_a_growing_topic(
    kafka_bootstrap: str,
) -> None:
    rounds = broker_floor(kafka_bootstrap, f"floor-{uuid.uuid4().hex[:8]}", rate=400,
                          seconds=1.5, rounds=2, partitions=2)  # fmt: skip
    assert [r["round"] for r in rounds] == [1, 2]
    assert [r["events"] for r in rounds] == [600, 600]
    assert [r["messages_before"] for r in rounds] == [0, 600]  # one topic, growing
    assert [r["partitions"] for r in rounds] == [2, 2]
    for r in rounds:
        # ages from the Kafka timestamp: positive, ordered quantiles, under the rounds' timeout
        assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["p999_ms"] < 60_000, r


def test_bench_broker_writes_the_rounds(kafka_bootstrap: str, tmp_path: Path) -> None:
    out = tmp_path / "floor.json"
    env = {**os.environ, "RISKSTREAM_KAFKA_BOOTSTRAP": kafka_bootstrap}
    proc = subprocess.run(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "engine.cli", "bench-broker", "--rate", "300", "--seconds", "1",
         "--rounds", "1", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())
    assert res["rate"] == 300 and len(res["rounds"]) == 1
    assert res["partitions"] == 4  # the worker's (RISKSTREAM_TOPIC_PARTITIONS, default 4)
    assert res["rounds"][0]["events"] == 300
    assert "broker floor" in proc.stdout
