"""transactions → scores, review-queue, dead-letter."""

from __future__ import annotations

from agents.batching import batch_agent
from engine.worker_runtime import Runtime


def register(rt: Runtime) -> None:
    batch_agent(
        rt, rt.settings.topic_transactions, rt.service.process_transactions, "score_transactions"
    )
