"""Helpers the end-to-end tests share: topics of their own, a database of their own."""

from __future__ import annotations

import uuid


def topic_env(suffix: str) -> dict[str, str]:
    """``RISKSTREAM_TOPIC_*`` settings naming topics no other test uses."""
    return {
        "RISKSTREAM_TOPIC_TRANSACTIONS": f"tx-{suffix}", "RISKSTREAM_TOPIC_EVENTS": f"ev-{suffix}",
        "RISKSTREAM_TOPIC_LABELS": f"lb-{suffix}", "RISKSTREAM_TOPIC_SCORES": f"sc-{suffix}",
        "RISKSTREAM_TOPIC_REVIEW": f"rq-{suffix}", "RISKSTREAM_TOPIC_DEAD_LETTER": f"dl-{suffix}",
    }  # fmt: skip


def db_url(url: str, db: int) -> str:
    """``url`` on database ``db`` (the server's other databases are left alone)."""
    base, _, tail = url.rpartition("/")
    return f"{base}/{db}" if tail.isdigit() and "//" in base else f"{url.rstrip('/')}/{db}"


def unique_topics() -> tuple[str, dict[str, str]]:
    """A fresh suffix and the ``RISKSTREAM_TOPIC_*`` settings naming topics with it."""
    suffix = uuid.uuid4().hex[:8]
    return suffix, topic_env(suffix)
