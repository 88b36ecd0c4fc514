"""labels → online model (each event_id learned once)."""

from __future__ import annotations

from agents.batching import batch_agent
from engine.worker_runtime import Runtime


def register(rt: Runtime) -> None:
    batch_agent(rt, rt.settings.topic_labels, rt.service.process_labels, "learn_labels")
