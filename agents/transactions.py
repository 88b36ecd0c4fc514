"""transactions → scores, review-queue, dead-letter.

The hot path runs on :class:`engine.batch_consumer.BatchConsumer` (librdkafka, adaptive batches)
started and stopped by a Faust service, so it lives and dies with the Faust worker; set
``RISKSTREAM_CONSUMER=agent`` for the plain Faust agent (``stream.take``) instead.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

from mode import Service

from agents.batching import batch_agent
from engine.batch_consumer import BatchConsumer
from engine.schemas import RawMessage
from engine.worker_runtime import BatchAbandonedError, Runtime, Started


def register(rt: Runtime) -> None:
    s = rt.settings
    if s.consumer == "agent":
        batch_agent(rt, s.topic_transactions, rt.service.process_transactions, "score_transactions")
        return
    stopping = rt.stopping
    service, topic = rt.service, s.topic_transactions

    def start(msgs: Sequence[RawMessage]) -> Started:
        return rt.start_sync(service.start_transactions, msgs, topic)

    def finish(started: Started) -> None:
        rt.finish_sync(service.finish_transactions, service.process_transactions, started, topic,
                       stopping)  # fmt: skip

    consumer = BatchConsumer(
        s.kafka_bootstrap, s.scoring_group_id, topic, start, finish,
        batch_size=s.batch_size, fetch_max_wait_ms=s.fetch_max_wait_ms,
        overlap_from=s.overlap_from, started=lambda begun: begun.handle is not None,
        **{"session.timeout.ms": int(s.broker_session_timeout_seconds * 1000)},
    )  # fmt: skip

    class ScoreTransactions(Service):
        """Runs the batch consumer's loop on its own thread for as long as the app runs."""

        _thread: threading.Thread | None = None
        _finished: asyncio.Future[None] | None = None

        async def on_start(self) -> None:
            loop = asyncio.get_running_loop()
            finished: asyncio.Future[None] = loop.create_future()

            def main() -> None:
                error: BaseException | None = None
                try:
                    consumer.run()
                except BatchAbandonedError:
                    pass  # stopping while a batch kept failing: it is redelivered on restart
                except BaseException as exc:  # surfaced to the Faust worker, which stops
                    error = exc
                loop.call_soon_threadsafe(_settle, finished, error)

            self._finished = finished
            self._thread = threading.Thread(target=main, name="score-transactions", daemon=True)
            self._thread.start()

        @Service.task
        async def _watch(self) -> None:
            """A consumer thread that dies takes the worker down (crash, not silent stall)."""
            while self._finished is None:
                await asyncio.sleep(0.1)
            await self._finished

        async def on_stop(self) -> None:
            stopping.set()
            consumer.stop()
            if self._thread is not None:
                await asyncio.to_thread(self._thread.join, 60)

    rt.app.service(ScoreTransactions)


def _settle(future: asyncio.Future[Any], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
