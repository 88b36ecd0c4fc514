"""events → account state in Redis (dead-letter for bad ones)."""

from __future__ import annotations

from agents.batching import batch_agent
from engine.worker_runtime import Runtime


def register(rt: Runtime) -> None:
    batch_agent(rt, rt.settings.topic_events, rt.service.process_events, "account_events")
