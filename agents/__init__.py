"""Faust agents and timers: thin adapters from topics to :class:`engine.service.ScoringService`.

No business logic lives here. Each agent takes micro-batches of raw events, hands them to the
service in a worker thread and lets Faust ack them only when the service returned (outputs
flushed). A failing batch is retried, never acked silently.
"""

from __future__ import annotations

from mode import Service

from agents.account_events import register as register_events
from agents.labels import register as register_labels
from agents.timers import register as register_timers
from agents.transactions import register as register_transactions
from engine.worker_runtime import Runtime


def register(runtime: Runtime) -> None:
    """Attach every agent and timer to ``runtime.app``."""
    register_transactions(runtime)
    register_events(runtime)
    register_labels(runtime)
    register_timers(runtime)

    class Stopping(Service):
        """Tells batches still retrying that the worker stops (they give up, uncommitted)."""

        async def on_stop(self) -> None:
            runtime.stopping.set()

    runtime.app.service(Stopping)
