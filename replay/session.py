"""A clean run on real servers, for the demo and the benchmarks.

Uses RISKSTREAM_KAFKA_BOOTSTRAP / RISKSTREAM_REDIS_URL when both are set, else starts the
embedded stack for the run; empties the run's data directory and Redis database and creates the
topics, so every run starts from the same state.
"""

from __future__ import annotations

import os
import shutil
from contextlib import ExitStack
from pathlib import Path

import redis

from engine.settings import Settings
from engine.sinks import ensure_topics
from engine.stack import EmbeddedStack

_SERVER_VARS = ("RISKSTREAM_KAFKA_BOOTSTRAP", "RISKSTREAM_REDIS_URL")


def fresh_run(stack: ExitStack, data_dir: Path) -> tuple[dict[str, str], Settings]:
    """The server settings (as environment variables, for a worker) and the run's Settings."""
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k in _SERVER_VARS}
    if len(env) < len(_SERVER_VARS):
        env = stack.enter_context(EmbeddedStack(log_dir=data_dir / "stack")).env()
    settings = Settings(
        data_dir=data_dir,
        kafka_bootstrap=env["RISKSTREAM_KAFKA_BOOTSTRAP"],
        redis_url=env["RISKSTREAM_REDIS_URL"],
    )
    redis.Redis.from_url(settings.redis_url).flushdb()
    ensure_topics(settings.kafka_bootstrap, settings.topics(), settings.topic_partitions)
    return env, settings
