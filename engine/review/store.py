"""Review cases in Redis: a sorted set ranked by expected loss (score × amount) + one hash per case.

Layout: ``rs:review:queue`` (ZSET, member = event_id, score = expected loss) and
``rs:review:case:<event_id>`` (HASH, field ``data`` = the case as JSON). Writes go through the
caller's pipeline so a batch's cases cost no extra round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import redis

QUEUE_KEY = "rs:review:queue"
CASE_PREFIX = "rs:review:case:"


def add_cases(pipe: redis.client.Pipeline, cases: Sequence[dict[str, Any]]) -> None:
    """Queue cases on ``pipe`` (the caller executes it); each needs event_id and expected_loss."""
    if not cases:
        return
    ranking = {c["event_id"]: float(c["expected_loss"]) for c in cases}
    for c in cases:
        pipe.hset(CASE_PREFIX + c["event_id"], "data", orjson.dumps(c))
    pipe.zadd(QUEUE_KEY, ranking)


def queue_depth(client: redis.Redis) -> int:
    return int(client.zcard(QUEUE_KEY))


def top_cases(client: redis.Redis, n: int = 20) -> list[dict[str, Any]]:
    """The ``n`` open cases with the highest expected loss, highest first."""
    ids = client.zrevrange(QUEUE_KEY, 0, n - 1)
    if not ids:
        return []
    pipe = client.pipeline(transaction=False)
    for eid in ids:
        pipe.hget(CASE_PREFIX + (eid.decode() if isinstance(eid, bytes) else str(eid)), "data")
    return [orjson.loads(raw) for raw in pipe.execute() if raw]
