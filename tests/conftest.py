"""Fixtures that start real servers (Valkey + Tansu) once per session, or use the ones named by
RISKSTREAM_REDIS_URL / RISKSTREAM_KAFKA_BOOTSTRAP."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis

from engine.stack import EmbeddedStack

#: The Kafka session timeout of the worker processes the tests start (``WorkerProcess`` passes
#: this process's environment on). Tansu answers a new consumer group's JoinGroup only after
#: half the session timeout, and a worker joins two groups one after the other (Faust's, then
#: the batch consumer's ``<app_id>-scoring``): the default 60 s made every worker start wait
#: 60 s; 10 s makes it 10 s. Like the fault suite's CI form; set the variable to test another.
TEST_SESSION_TIMEOUT_SECONDS = "10"


def pytest_configure(config: pytest.Config) -> None:
    """Shorter consumer-group joins for every worker process the tests start."""
    os.environ.setdefault("RISKSTREAM_BROKER_SESSION_TIMEOUT_SECONDS", TEST_SESSION_TIMEOUT_SECONDS)


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
