"""The batch consumer's loop: the order in which it starts, finishes and commits batches.

librdkafka is replaced by a scripted stand-in here because the property under test is the loop's
own ordering, whatever the broker does; the fault suite (``tests/e2e/test_faults_e2e.py``) proves
the same thing black-box, through a real worker, Tansu and Valkey (its poison scenario).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pytest

from engine import batch_consumer
from engine.batch_consumer import BatchConsumer
from engine.schemas import RawMessage


class Message:
    def __init__(self, offset: int) -> None:
        self._offset = offset

    def error(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000 + self._offset)

    def value(self) -> bytes:
        return b"{}"

    def topic(self) -> str:
        return "transactions"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


class ScriptedConsumer:
    """Hands out ``batches`` (lists of offsets) one per poll/consume, then nothing."""

    batches: list[list[int]] = []
    stop: threading.Event | None = None
    commits: list[int] = []

    def __init__(self, config: dict[str, Any]) -> None:
        self.todo = [list(b) for b in type(self).batches]

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        pass

    def poll(self, timeout: float) -> Message | None:
        if not self.todo:
            assert type(self).stop is not None
            type(self).stop.set()
            return None
        batch = self.todo[0]
        return Message(batch.pop(0))

    def consume(self, n: int, timeout: float) -> list[Message]:
        if not self.todo:
            return []
        return [Message(o) for o in self.todo.pop(0)]

    def commit(self, offsets: Sequence[Any], asynchronous: bool) -> None:
        type(self).commits.extend(tp.offset for tp in offsets)

    def close(self) -> None:
        pass


def run(batches: list[list[int]], fails: set[int], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The loop over ``batches``; the batch starting at an offset in ``fails`` cannot start."""
    monkeypatch.setattr(batch_consumer, "Consumer", ScriptedConsumer)
    ScriptedConsumer.batches, ScriptedConsumer.commits = batches, []
    steps: list[str] = []

    def start(msgs: Sequence[RawMessage]) -> tuple[int, bool]:
        steps.append(f"start {msgs[0].offset}")
        return msgs[0].offset, msgs[0].offset not in fails

    def finish(begun: tuple[int, bool]) -> None:
        steps.append(f"finish {begun[0]}")

    consumer = BatchConsumer("unused:9092", "g", "transactions", start, finish, batch_size=100,
                             started=lambda begun: begun[1])  # fmt: skip
    ScriptedConsumer.stop = consumer._stop  # noqa: SLF001 - the stand-in ends the loop
    consumer.run()
    return steps


def test_a_backlog_batch_stays_in_flight_while_the_next_one_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    steps = run([list(range(0, 60)), list(range(60, 120)), list(range(120, 180))], set(),
                monkeypatch)  # fmt: skip
    assert steps == ["start 0", "start 60", "finish 0", "start 120", "finish 60", "finish 120"]
    assert ScriptedConsumer.commits == [60, 120, 180]


def test_a_batch_that_could_not_start_is_finished_before_the_next_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Its events are counted when it is finished: a later batch's counted first would be
    # counted out of order (the fault suite's poison run saw features off the reference).
    steps = run([list(range(0, 60)), list(range(60, 120)), list(range(120, 180))], {60},
                monkeypatch)  # fmt: skip
    assert steps == ["start 0", "start 60", "finish 0", "finish 60", "start 120", "finish 120"]
    assert ScriptedConsumer.commits == [60, 120, 180]


def test_a_small_batch_is_finished_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    steps = run([list(range(0, 10)), list(range(10, 20))], set(), monkeypatch)
    assert steps == ["start 0", "finish 0", "start 10", "finish 10"]
