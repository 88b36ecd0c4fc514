"""Fixtures that start real servers (Valkey + Tansu) once per session, or use the ones named by
RISKSTREAM_REDIS_URL / RISKSTREAM_KAFKA_BOOTSTRAP."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis

from engine.stack import EmbeddedStack


@pytest.fixture(scope="session")
def stack() -> Iterator[dict[str, str]]:
    """Connection settings of a real Redis-protocol server and a real Kafka-protocol broker."""
    redis_url = os.environ.get("RISKSTREAM_REDIS_URL")
    bootstrap = os.environ.get("RISKSTREAM_KAFKA_BOOTSTRAP")
    if redis_url and bootstrap:
        yield {"RISKSTREAM_REDIS_URL": redis_url, "RISKSTREAM_KAFKA_BOOTSTRAP": bootstrap}
        return
    with EmbeddedStack() as s:
        yield {
            "RISKSTREAM_REDIS_URL": redis_url or s.redis_url,
            "RISKSTREAM_KAFKA_BOOTSTRAP": bootstrap or s.kafka_bootstrap,
        }


@pytest.fixture(scope="session")
def redis_url(stack: dict[str, str]) -> str:
    return stack["RISKSTREAM_REDIS_URL"]


@pytest.fixture(scope="session")
def kafka_bootstrap(stack: dict[str, str]) -> str:
    return stack["RISKSTREAM_KAFKA_BOOTSTRAP"]


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client on a database emptied before the test."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()
