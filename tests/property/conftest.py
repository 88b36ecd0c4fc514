"""Fixtures of the property tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis


@pytest.fixture(scope="module")
def url(redis_url: str) -> Iterator[str]:
    """A real Redis-protocol server's URL, its database emptied once per module."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()
    yield redis_url
