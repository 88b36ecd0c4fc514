"""One shape for every agent: raw micro-batches from a topic, handed to a service method."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from engine.app import topic
from engine.schemas import RawMessage
from engine.service import BatchReport
from engine.worker_runtime import Runtime


def batch_agent(
    rt: Runtime, topic_name: str, handler: Callable[[Sequence[RawMessage]], BatchReport], name: str
) -> Any:
    """Register an agent that feeds ``handler`` batches of ``batch_size`` (or ``within`` s)."""
    s = rt.settings

    async def consume(stream: Any) -> None:
        async for events in stream.take_events(s.batch_size, within=s.batch_within_seconds):
            await rt.run_batch(handler, events, topic_name)

    consume.__name__ = consume.__qualname__ = name
    return rt.app.agent(topic(rt.app, topic_name, s), name=name)(consume)
