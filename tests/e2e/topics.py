"""Topic names of one end-to-end test, unique per run (tests share one broker)."""

from __future__ import annotations

import uuid


def unique_topics() -> tuple[str, dict[str, str]]:
    """A fresh suffix and the RISKSTREAM_TOPIC_* variables naming topics with it."""
    suffix = uuid.uuid4().hex[:8]
    return suffix, {
        "RISKSTREAM_TOPIC_TRANSACTIONS": f"tx-{suffix}", "RISKSTREAM_TOPIC_EVENTS": f"ev-{suffix}",
        "RISKSTREAM_TOPIC_LABELS": f"lb-{suffix}", "RISKSTREAM_TOPIC_SCORES": f"sc-{suffix}",
        "RISKSTREAM_TOPIC_REVIEW": f"rq-{suffix}", "RISKSTREAM_TOPIC_DEAD_LETTER": f"dl-{suffix}",
    }  # fmt: skip
