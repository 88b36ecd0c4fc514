"""What the broker and the framework allow before riskstream does any work (``make bench``).

* :func:`kafka_ceiling`: a plain aiokafka consumer reads the topic (bytes in, nothing done).
* :func:`faust_ceiling`: a bare Faust agent, made by :func:`engine.app.create_app` with the
  worker's settings, takes batches with ``stream.take_events(batch_size, within)`` and does
  nothing else; it runs as a child process (``python -m replay.ceilings``), as a worker does.

Both read the topic the worker read, from its first offset, and report events/s between the
first and the last message they got.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from engine.stack import StackError


async def _aiokafka_drain(bootstrap: str, topic: str, n: int, timeout: float) -> dict[str, float]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = sorted(consumer.partitions_for_topic(topic) or {0})
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        got, nbytes = 0, 0
        t_first = t_last = 0.0
        deadline = time.monotonic() + timeout
        while got < n and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
            for records in batch.values():
                if records and not got:
                    t_first = time.perf_counter()
                got += len(records)
                nbytes += sum(len(r.value or b"") for r in records)
            if batch:
                t_last = time.perf_counter()
        secs = max(t_last - t_first, 1e-9)
        return {"events": float(got), "seconds": secs, "events_per_second": got / secs,
                "bytes_per_second": nbytes / secs}  # fmt: skip
    finally:
        await consumer.stop()


def kafka_ceiling(bootstrap: str, topic: str, n: int, timeout: float = 120) -> dict[str, float]:
    """A plain aiokafka consumer reading ``n`` messages of ``topic`` from the beginning."""
    return asyncio.run(_aiokafka_drain(bootstrap, topic, n, timeout))


def faust_ceiling(
    env: dict[str, str], topic: str, n: int, out: Path, timeout: float = 300
) -> dict[str, float]:
    """A bare Faust agent (worker settings, new consumer group) reading ``n`` messages of
    ``topic``; the group's first join is not timed."""
    out.unlink(missing_ok=True)
    child_env = {**os.environ, **env, "RISKSTREAM_APP_ID": f"faust-ceiling-{os.getpid()}",
                 "RISKSTREAM_TOPIC_TRANSACTIONS": topic}  # fmt: skip
    log = out.with_suffix(".log")
    with log.open("ab") as sink:
        proc = subprocess.Popen(  # noqa: S603 - our own module
            [sys.executable, "-m", "replay.ceilings", str(n), str(out)],
            env=child_env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if out.exists():
                result: dict[str, float] = json.loads(out.read_text())
                return result
            if proc.poll() is not None:
                msg = f"the Faust ceiling app exited ({proc.returncode}); see {log}"
                raise StackError(msg)
            time.sleep(0.2)
        msg = f"the Faust ceiling app read fewer than {n} messages in {timeout:.0f}s; see {log}"
        raise StackError(msg)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _faust_main(n: int, out: Path) -> Any:
    """The child process: a Faust app whose one agent counts and acks, nothing else."""
    from engine.app import create_app, topic
    from engine.settings import Settings

    settings = Settings()
    app = create_app(settings, web_enabled=False)
    state = {"got": 0, "t_first": 0.0}

    async def count(stream: Any) -> None:
        async for events in stream.take_events(settings.batch_size,
                                               within=settings.batch_within_seconds):  # fmt: skip
            if not state["got"]:
                state["t_first"] = time.perf_counter()
            state["got"] += len(events)
            if state["got"] >= n:
                secs = max(time.perf_counter() - state["t_first"], 1e-9)
                out.write_text(json.dumps({
                    "events": state["got"], "seconds": secs,
                    "events_per_second": state["got"] / secs,
                    "batch_size": settings.batch_size, "within_seconds":
                    settings.batch_within_seconds,
                }))  # fmt: skip

    app.agent(topic(app, settings.topic_transactions, settings), name="ceiling")(count)
    return app


if __name__ == "__main__":  # pragma: no cover - run by faust_ceiling as a child process
    import faust

    faust_app = _faust_main(int(sys.argv[1]), Path(sys.argv[2]))
    faust.Worker(faust_app, loglevel="WARNING").execute_from_commandline()
