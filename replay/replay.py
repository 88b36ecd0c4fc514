"""``riskstream replay``: history through the real path, in-process or into Kafka.

The merged stream (:mod:`replay.merge`) goes either

* ``inprocess``: to a :class:`~engine.service.ScoringService` built like the worker's
  (``live=False``: features and decisions, no review cases), batch by batch — transactions to
  ``process_transactions``, account events to ``process_events``, labels to ``process_labels`` —
  encoded to JSON and decoded by the same code as a worker, so malformed rows become dead letters
  with the live path's reasons. With ``out``, ``DIR/decisions.parquet`` gets one row per scored
  transaction: ``event_id``, ``card_id``, ``ts``, ``amount``, ``score``, ``decision``, ``reasons``,
  ``rule_set``, ``model``, ``mode`` and every feature value as its own column (a feature whose name
  clashes with one of those is written as ``feature_<name>``); dead letters go to
  ``DIR/dead_letters.jsonl``;
* ``kafka``: to the topics (transactions keyed by ``card_id``, events by ``customer_id`` or
  ``card_id``), as fast as possible or paced by event time at ``speed`` × real time.

Resumable: a checkpoint (``DIR/replay-checkpoint.json``, or under ``data_dir/replay/`` without
``out``) records the merge position after the last batch made durable (decisions written as a
Parquet part, or Kafka producer flushed); ``resume=True`` continues from it if the inputs and
options are the same. Decisions parts are concatenated into ``decisions.parquet`` at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from engine.schemas import DUPLICATE, MALFORMED_ROW, DeadLetter, RawMessage
from engine.sinks import NullSink
from replay.merge import (
    EVENT,
    KINDS,
    LABEL,
    TRANSACTION,
    Batch,
    MergePosition,
    Merger,
    Record,
    count_rows,
)
from replay.quarantine import REJECTED_FILE, Quarantine, first_bad
from replay.seen_ids import SeenIds, id_hashes
from replay.sources import MALFORMED, MALFORMED_RAW

if TYPE_CHECKING:
    from engine.service import ScoringService
    from engine.settings import Settings

TARGETS = ("inprocess", "kafka")
DECISION_COLUMNS = (
    "event_id", "card_id", "ts", "amount", "score", "decision", "reasons", "rule_set", "model",
    "mode",
)  # fmt: skip
CHECKPOINT_NAME = "replay-checkpoint.json"
_PARTS_DIR = ".decisions-parts"
_KEEP_DEAD = 10_000  # dead-letter records kept in memory for the report (all are counted)


@dataclass
class ReplayOptions:
    transactions: Path
    to: str = "inprocess"
    events: Path | None = None
    labels: Path | None = None
    label_delay_ms: int | None = None
    #: None: as fast as possible; else event time runs ``speed`` times faster than real time
    speed: float | None = None
    start_ms: int | None = None
    until_ms: int | None = None
    resume: bool = False
    out: Path | None = None
    batch_size: int = 1000
    #: how far labels/events may wait behind later transactions (event time, see replay.merge)
    max_defer_ms: int = 3_600_000
    #: decisions per Parquet part (a part + checkpoint is written at least this often)
    part_rows: int = 100_000
    checkpoint_seconds: float = 30.0
    progress: bool = True
    #: stop at the first bad transaction row (after its batch) instead of quarantining it
    strict: bool = False

    def __post_init__(self) -> None:
        if self.to not in TARGETS:
            msg = f"--to must be one of {', '.join(TARGETS)}, not {self.to!r}"
            raise ValueError(msg)
        if self.labels is not None and self.label_delay_ms is not None:
            msg = "give --labels or --label-delay, not both"
            raise ValueError(msg)
        if self.speed is not None and self.speed <= 0:
            msg = "--speed must be max or a positive factor (e.g. 60x)"
            raise ValueError(msg)
        if self.out is not None and self.to != "inprocess":
            msg = "--out writes the decisions of an in-process replay (use --to inprocess)"
            raise ValueError(msg)
        if self.start_ms is not None and self.until_ms is not None:
            if self.until_ms <= self.start_ms:
                msg = "--until must be after --from"
                raise ValueError(msg)

    def fingerprint(self) -> str:
        """Identifies the inputs and the options that shape the merged stream."""

        def file_id(p: Path | None) -> Any:
            if p is None:
                return None
            st = p.stat()
            return [str(p.resolve()), st.st_size, st.st_mtime_ns]

        ident = {
            "to": self.to,
            "transactions": file_id(self.transactions),
            "events": file_id(self.events),
            "labels": file_id(self.labels),
            "label_delay_ms": self.label_delay_ms,
            "start_ms": self.start_ms,
            "until_ms": self.until_ms,
            "max_defer_ms": self.max_defer_ms,
            "out": str(self.out.resolve()) if self.out else None,
        }
        return hashlib.sha256(orjson.dumps(ident)).hexdigest()[:24]


def parse_speed(text: str) -> float | None:
    """``max`` → None; ``10x``, ``10`` or ``0.5x`` → the factor.

    >>> parse_speed("max"), parse_speed("60x")
    (None, 60.0)
    """
    s = text.strip().lower()
    if s in ("max", "inf", "0"):
        return None
    try:
        value = float(s[:-1] if s.endswith("x") else s)
    except ValueError:
        msg = f"--speed: expected max or a factor like 10x, got {text!r}"
        raise ValueError(msg) from None
    if value <= 0 or not np.isfinite(value):
        msg = f"--speed: the factor must be positive, got {text!r}"
        raise ValueError(msg)
    return value


@dataclass
class ReplayResult:
    """What a replay did; ``valid``/``dead`` are the engine's verdicts (in-process only)."""

    to: str
    sent: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    valid: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    dead: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    dead_reasons: dict[str, int] = field(default_factory=dict)
    decisions: dict[str, int] = field(default_factory=dict)
    learned: int = 0
    seconds: float = 0.0
    filtered: int = 0
    out_of_order: dict[str, int] = field(default_factory=dict)
    resumed: bool = False
    complete: bool = False
    decisions_path: str | None = None
    position: dict[str, Any] = field(default_factory=dict)

    @property
    def total_sent(self) -> int:
        return sum(self.sent.values())

    @property
    def events_per_second(self) -> float:
        return self.total_sent / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "to": self.to, "sent": self.sent, "valid": self.valid, "dead": self.dead,
            "dead_reasons": self.dead_reasons, "decisions": self.decisions,
            "learned": self.learned, "seconds": self.seconds,
            "events_per_second": self.events_per_second, "filtered": self.filtered,
            "out_of_order": self.out_of_order, "resumed": self.resumed,
            "complete": self.complete, "decisions_path": self.decisions_path,
            "position": self.position,
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReplayResult:
        r = cls(to=str(data.get("to", "inprocess")))
        for name in ("sent", "valid", "dead", "dead_reasons", "decisions", "out_of_order"):
            getattr(r, name).update({str(k): int(v) for k, v in data.get(name, {}).items()})
        r.learned = int(data.get("learned", 0))
        r.seconds = float(data.get("seconds", 0.0))
        r.filtered = int(data.get("filtered", 0))
        r.complete = bool(data.get("complete", False))
        r.decisions_path = data.get("decisions_path")
        r.position = dict(data.get("position", {}))
        return r


# -------------------------------------------------------------------------------- plumbing


class ReplaySink(NullSink):
    """Counts what the service emits and keeps the dead letters (the first ones in full)."""

    def __init__(self, dead_letter_topic: str) -> None:
        super().__init__()
        self.dead_letter_topic = dead_letter_topic
        self.dead_reasons: Counter[str] = Counter()
        self.dead_letters: list[bytes] = []

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        super().send(topic, key, value)
        if topic == self.dead_letter_topic:
            try:
                reason = str(orjson.loads(value).get("reason", "unknown"))
            except (orjson.JSONDecodeError, AttributeError):
                reason = "unknown"
            self.dead_reasons[reason] += 1
            self.dead_letters.append(value)

    def take_dead_letters(self) -> list[bytes]:
        out, self.dead_letters = self.dead_letters, []
        return out


def _default(value: Any) -> Any:
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    msg = f"not JSON serialisable: {type(value).__name__}"
    raise TypeError(msg)


def encode_records(records: list[Record], topic: str, first_row: int = -1) -> list[RawMessage]:
    """Records as the raw messages a worker would receive (bytes records, and the lines of
    malformed CSV rows, pass as they are); ``first_row`` >= 0: each message's offset is its row
    in the file (dead letters name it)."""
    dumps, opt = orjson.dumps, orjson.OPT_SERIALIZE_NUMPY

    def value(r: Record) -> bytes:
        if isinstance(r, bytes):
            return r
        if MALFORMED in r:
            return bytes(r[MALFORMED_RAW])
        return dumps(r, option=opt, default=_default)

    return [
        RawMessage(value(r), topic, offset=first_row + i if first_row >= 0 else -1)
        for i, r in enumerate(records)
    ]


def _atomic_write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    os.replace(tmp, path)


class DecisionLog:
    """Decisions and feature values, buffered and written as Parquet parts, then one file."""

    def __init__(self, out: Path, first_part: int = 0) -> None:
        self.out = out
        self.parts_dir = out / _PARTS_DIR
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        self.next_part = first_part
        for stale in self.parts_dir.glob("part-*.parquet"):  # written after the checkpoint
            if int(stale.stem.split("-")[1]) >= first_part:
                stale.unlink()
        self._frames: list[pd.DataFrame] = []
        self.buffered = 0

    def add(self, scored: Any) -> None:
        ds = scored.decisions
        if not ds:
            return
        cols: dict[str, Any] = {
            "event_id": [d.event_id for d in ds],
            "card_id": [d.card_id for d in ds],
            "ts": np.fromiter((d.ts for d in ds), dtype=np.int64, count=len(ds)),
            "amount": np.fromiter((d.amount for d in ds), dtype=np.float64, count=len(ds)),
            "score": np.fromiter((d.score for d in ds), dtype=np.float64, count=len(ds)),
            "decision": [d.decision for d in ds],
            "reasons": [list(d.reasons) for d in ds],
            "rule_set": [d.rule_set for d in ds],
            "model": [d.model for d in ds],
            "mode": [d.mode for d in ds],
        }
        x = np.asarray(scored.features, dtype=np.float64)
        for j, name in enumerate(scored.feature_names):
            column = f"feature_{name}" if name in cols else str(name)
            cols[column] = x[:, j]
        self._frames.append(pd.DataFrame(cols))
        self.buffered += len(ds)

    def write_part(self) -> None:
        if not self._frames:
            return
        frame = pd.concat(self._frames, ignore_index=True)
        path = self.parts_dir / f"part-{self.next_part:05d}.parquet"
        tmp = path.with_suffix(".tmp")
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp)
        os.replace(tmp, path)
        self.next_part += 1
        self._frames, self.buffered = [], 0

    def finish(self) -> Path:
        """Concatenate the parts into ``decisions.parquet`` (streaming) and remove them."""
        self.write_part()
        target = self.out / "decisions.parquet"
        parts = sorted(self.parts_dir.glob("part-*.parquet"))
        tmp = target.with_suffix(".parquet.tmp")
        writer: pq.ParquetWriter | None = None
        try:
            for part in parts:
                table = pq.read_table(part)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table.cast(writer.schema))
        finally:
            if writer is not None:
                writer.close()
        if writer is None:  # no transaction at all: an empty file with the fixed columns
            empty = pd.DataFrame({c: pd.Series(dtype=object) for c in DECISION_COLUMNS})
            pq.write_table(pa.Table.from_pandas(empty, preserve_index=False), tmp)
        os.replace(tmp, target)
        shutil.rmtree(self.parts_dir, ignore_errors=True)
        return target


def checkpoint_path(opts: ReplayOptions, settings: Settings) -> Path:
    if opts.out is not None:
        return opts.out / CHECKPOINT_NAME
    return settings.data_dir / "replay" / f"{opts.fingerprint()}.json"


def _load_checkpoint(path: Path, fingerprint: str) -> dict[str, Any] | None:
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    if data.get("fingerprint") != fingerprint:
        msg = (
            f"{path}: the checkpoint is for other inputs or options; "
            "run without --resume to start over"
        )
        raise ValueError(msg)
    return data


def _fmt_ts(ms: int | None) -> str:
    if ms is None:
        return "-"
    return str(pd.Timestamp(ms, unit="ms", tz="UTC").strftime("%Y-%m-%d %H:%M"))


@contextmanager
def _progress_bar(enabled: bool, total: int, label: str) -> Iterator[tuple[Progress, Any]]:
    with Progress(
        TextColumn(f"[bold]{label}"), BarColumn(), TaskProgressColumn(),
        TextColumn("{task.completed:,}/{task.total:,}"),
        TextColumn("[cyan]{task.fields[rate]}"), TextColumn("event time {task.fields[at]}"),
        TextColumn("[yellow]{task.fields[bad]}"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=Console(stderr=True), disable=not enabled, transient=False,
    ) as bar:  # fmt: skip
        task = bar.add_task(label, total=max(1, total), rate="", at="-", bad="")
        yield bar, task


def _estimate_total(opts: ReplayOptions) -> int:
    n_tx = count_rows(opts.transactions)
    total = n_tx
    if opts.events is not None:
        total += count_rows(opts.events)
    if opts.labels is not None:
        total += count_rows(opts.labels)
    elif opts.label_delay_ms is not None:
        total += n_tx
    return total


class _Pacer:
    """Sleeps so that event time advances ``speed`` times faster than the wall clock."""

    def __init__(self, speed: float | None) -> None:
        self.speed = speed
        self._t0: float | None = None
        self._ts0 = 0

    def wait(self, ts_ms: int) -> None:
        if self.speed is None:
            return
        now = time.perf_counter()
        if self._t0 is None:
            self._t0, self._ts0 = now, ts_ms
            return
        ahead = self._t0 + (ts_ms - self._ts0) / 1000.0 / self.speed - now
        if ahead > 0.002:
            time.sleep(ahead)


# ---------------------------------------------------------------------------------- replay


class _Run:
    """State shared by both targets: merger, checkpoint, progress, result."""

    def __init__(self, opts: ReplayOptions, settings: Settings, console: Console) -> None:
        self.opts = opts
        self.settings = settings
        self.console = console
        self.fingerprint = opts.fingerprint()
        self.ckpt_path = checkpoint_path(opts, settings)
        self.result = ReplayResult(to=opts.to)
        self.position = MergePosition()
        self.first_part = 0
        self.done_already = False
        state = None
        if opts.resume:
            state = _load_checkpoint(self.ckpt_path, self.fingerprint)
            if state is None:
                console.print(f"no checkpoint at {self.ckpt_path}: starting from the beginning")
        if state is not None:
            self.position = MergePosition.from_json(state["position"])
            self.first_part = int(state.get("parts", 0))
            self.result = ReplayResult.from_json(state.get("result", {}))
            self.result.resumed = True
            self.done_already = bool(state.get("done"))
        else:
            self.ckpt_path.unlink(missing_ok=True)
            if opts.out is not None:
                shutil.rmtree(opts.out / _PARTS_DIR, ignore_errors=True)
                (opts.out / "dead_letters.jsonl").unlink(missing_ok=True)
        self.merger = Merger(
            opts.transactions, opts.events, opts.labels, opts.label_delay_ms,
            opts.start_ms, opts.until_ms, opts.batch_size, opts.max_defer_ms, self.position,
        )  # fmt: skip
        self.seconds_before = self.result.seconds
        self.t0 = time.perf_counter()
        # the ids decided so far, and their hashes beside the checkpoint: a resumed run knows
        # exactly what was decided before it (not the rows the decoder dead-lettered)
        self.decided = SeenIds()
        self.ids_path = self.ckpt_path.with_suffix(".ids")
        kept = int(state.get("decided_ids", 0)) if state is not None else 0
        if kept:
            self.decided.add_hashes(np.fromfile(self.ids_path, dtype=np.uint64, count=kept))
        self.ids_path.parent.mkdir(parents=True, exist_ok=True)
        with self.ids_path.open("ab") as f:
            f.truncate(kept * 8)  # what came after the checkpoint is replayed again
        self._ids_written = kept

    def remember(self, ids: list[str]) -> None:
        """Ids a batch decided: kept in memory and appended to the ids file (closed at once, so
        a checkpoint saved after it counts only what is written)."""
        hashes = id_hashes(ids)
        self.decided.add_hashes(hashes)
        with self.ids_path.open("ab") as f:
            f.write(hashes.tobytes())
        self._ids_written += len(hashes)

    def save(self, position: MergePosition, parts: int, done: bool = False) -> None:
        self.result.seconds = self.seconds_before + time.perf_counter() - self.t0
        self.result.position = position.to_json()
        _atomic_write_json(self.ckpt_path, {
            "fingerprint": self.fingerprint, "position": position.to_json(), "parts": parts,
            "done": done, "result": self.result.to_json(), "decided_ids": self._ids_written,
        })  # fmt: skip

    def finish_stats(self) -> None:
        self.result.filtered += self.merger.stats.filtered
        self.result.out_of_order = dict(self.merger.stats.out_of_order)
        self.result.seconds = self.seconds_before + time.perf_counter() - self.t0


def replay_inprocess(
    opts: ReplayOptions,
    settings: Settings,
    service: ScoringService | None = None,
    console: Console | None = None,
) -> ReplayResult:
    """Run the merged stream through the scoring service in this process."""
    from engine.build import build_service

    console = console or Console(stderr=True)
    run = _Run(opts, settings, console)
    if run.done_already:
        console.print("this replay already completed (checkpoint says done)")
        return run.result
    sink = ReplaySink(settings.topic_dead_letter)
    if service is None:
        service = build_service(settings, sink=sink, live=False)
    else:
        service.sink = sink
    if run.position != MergePosition():
        # a resumed replay re-reads the batches after its checkpoint: the store has counted
        # them, their decisions were not saved; score them again (from a state counting each once)
        service.redelivery = "rescore"
    elif service.pipeline.features.has_counted():
        console.print(
            "[yellow]the feature store already holds state: transactions it has counted are "
            "dead-lettered as duplicate_event_id (empty the Redis database to replay afresh)"
        )
    log = DecisionLog(opts.out, run.first_part) if opts.out is not None else None
    decided = run.decided
    dead_file = (opts.out / "dead_letters.jsonl").open("ab") if opts.out is not None else None
    quarantine = Quarantine()
    # rows are numbered from the merge position, exact unless --from/--until skipped some
    numbered = opts.start_ms is None and opts.until_ms is None
    handlers = {
        TRANSACTION: (service.process_transactions, settings.topic_transactions),
        EVENT: (service.process_events, settings.topic_events),
        LABEL: (service.process_labels, settings.topic_labels),
    }
    result = run.result
    pacer = _Pacer(opts.speed)
    last_saved = time.monotonic()
    position = run.position
    total = _estimate_total(opts) if opts.progress else 0
    try:
        with _progress_bar(opts.progress, total, "replay") as (bar, task):
            consumed0 = _consumed(position)
            bar.update(task, completed=consumed0)
            batch: Batch
            for batch in run.merger.batches():
                pacer.wait(int(batch.ts[0]))
                process, topic = handlers[batch.kind]
                first_row = -1
                if batch.kind == TRANSACTION and numbered:
                    first_row = batch.position.transactions - len(batch.records)
                messages = encode_records(batch.records, topic, first_row)
                drop = _to_reject(batch.records, decided if batch.kind == TRANSACTION else None)
                messages = _reject(messages, drop, service)
                report = process(messages)
                if batch.kind == TRANSACTION and report.scored is not None:
                    run.remember([d.event_id for d in report.scored.decisions])
                result.sent[batch.kind] += len(batch.records)
                result.dead[batch.kind] += len(drop)
                result.valid[batch.kind] += report.valid
                result.dead[batch.kind] += report.dead
                result.learned += report.learned
                for decision, n in report.decisions.items():
                    result.decisions[decision] = result.decisions.get(decision, 0) + n
                if log is not None and report.scored is not None:
                    log.add(report.scored)
                dead = sink.take_dead_letters()
                if dead_file is not None and dead:
                    dead_file.write(b"".join(d + b"\n" for d in dead))
                bad_rows = _rejected_rows(dead, topic) if batch.kind == TRANSACTION else None
                if bad_rows is not None and len(bad_rows):
                    quarantine.add(bad_rows)
                    if opts.strict:
                        raise first_bad(bad_rows, str(opts.transactions))
                for reason, n in sink.dead_reasons.items():
                    result.dead_reasons[reason] = result.dead_reasons.get(reason, 0) + n
                sink.dead_reasons.clear()
                position = batch.position
                due = log is not None and log.buffered >= opts.part_rows
                if due or time.monotonic() - last_saved >= opts.checkpoint_seconds:
                    if log is not None:
                        log.write_part()
                    if dead_file is not None:
                        dead_file.flush()
                    run.save(position, log.next_part if log else 0)
                    last_saved = time.monotonic()
                _advance(bar, task, run, position, int(batch.ts[-1]), sum(run.result.dead.values()))
            bar.update(task, completed=max(_consumed(position), 1), total=max(
                _consumed(position), 1))  # fmt: skip
    except KeyboardInterrupt:
        if log is not None:
            log.write_part()
        run.save(position, log.next_part if log else 0)
        console.print(f"interrupted; checkpoint saved, continue with --resume ({run.ckpt_path})")
        raise
    finally:
        if dead_file is not None:
            dead_file.close()
        if opts.out is not None:
            if opts.resume and (opts.out / REJECTED_FILE).exists():
                quarantine.parts.insert(0, pd.read_parquet(opts.out / REJECTED_FILE))
            quarantine.write(opts.out)
    run.finish_stats()
    if log is not None:
        result.decisions_path = str(log.finish())
    result.complete = True
    run.save(position, 0, done=True)
    return result


def _to_reject(records: list[Record], decided: SeenIds | None) -> dict[int, tuple[str, str]]:
    """Rows dead-lettered before the service sees them (row -> reason, detail), in one pass:
    a file's row that did not split into fields (a CSV line), and, given ``decided``, a
    transaction whose event id an earlier batch decided. The store recognises a copy on the same
    event-time day (its ``seen`` sets are per day); a file may repeat an id on another day, and
    the replay decides an id once, as ``train`` and ``backtest`` keep its first row."""
    drop: dict[int, tuple[str, str]] = {}
    at: list[int] = []
    ids: list[str] = []
    check = decided is not None and len(decided) > 0
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            continue
        if MALFORMED in r:
            drop[i] = (MALFORMED_ROW, str(r[MALFORMED]))
        elif check and isinstance(e := r.get("event_id"), str):
            at.append(i)
            ids.append(e)
    if ids and decided is not None:
        detail = "event_id decided earlier in this replay ({}): not scored again"
        for k in np.flatnonzero(decided.contains(ids)).tolist():
            drop[at[k]] = (DUPLICATE, detail.format(ids[k][:64]))
    return drop


def _reject(
    messages: list[RawMessage], drop: dict[int, tuple[str, str]], service: ScoringService
) -> list[RawMessage]:
    """Dead-letter the rows in ``drop`` (row -> reason, detail); the rest go on."""
    if not drop:
        return messages
    dead = [DeadLetter(reason, detail, messages[i]) for i, (reason, detail) in sorted(drop.items())]
    service.emit_dead(dead, messages[0].topic)
    return [m for i, m in enumerate(messages) if i not in drop]


def _rejected_rows(dead: list[bytes], topic: str) -> pd.DataFrame:
    """The ``row``/``reason``/``detail`` of a transaction batch's dead letters (no raw value)."""
    rows = [orjson.loads(d) for d in dead]
    rows = [r for r in rows if r.get("topic") == topic]
    return pd.DataFrame({
        "row": np.array([r.get("offset", -1) for r in rows], dtype=np.int64),
        "reason": [str(r.get("reason", "")) for r in rows],
        "detail": [str(r.get("detail", "")) for r in rows],
    })  # fmt: skip


def _consumed(p: MergePosition) -> int:
    return p.transactions + p.events + p.labels


def _advance(
    bar: Progress, task: Any, run: _Run, position: MergePosition, ts: int, bad: int = 0
) -> None:
    elapsed = run.seconds_before + time.perf_counter() - run.t0
    bar.update(
        task,
        completed=_consumed(position),
        rate=f"{run.result.total_sent / max(elapsed, 1e-9):,.0f} ev/s",
        at=_fmt_ts(ts),
        bad=f"{bad:,} quarantined" if bad else "",
    )


def replay_kafka(
    opts: ReplayOptions, settings: Settings, console: Console | None = None
) -> ReplayResult:
    """Publish the merged stream to the topics, paced by event time or as fast as possible."""
    from confluent_kafka import KafkaException

    from engine.sinks import ensure_topics
    from replay.kafka_io import producer

    console = console or Console(stderr=True)
    run = _Run(opts, settings, console)
    if run.done_already:
        console.print("this replay already completed (checkpoint says done)")
        return run.result
    ensure_topics(settings.kafka_bootstrap, settings.topics(), settings.topic_partitions)
    prod = producer(settings.kafka_bootstrap)
    topics = {
        TRANSACTION: settings.topic_transactions,
        EVENT: settings.topic_events,
        LABEL: settings.topic_labels,
    }
    result = run.result
    pacer = _Pacer(opts.speed)
    position = run.position
    last_saved = time.monotonic()
    total = _estimate_total(opts) if opts.progress else 0

    def durable() -> None:
        remaining = prod.flush(60)
        if remaining:
            msg = f"{remaining} records not delivered to Kafka"
            raise KafkaException(msg)

    try:
        with _progress_bar(opts.progress, total, "replay → kafka") as (bar, task):
            bar.update(task, completed=_consumed(position))
            for batch in run.merger.batches():
                topic = topics[batch.kind]
                messages = encode_records(batch.records, topic)
                for i, (rec, msg) in enumerate(zip(batch.records, messages, strict=True)):
                    pacer.wait(int(batch.ts[i]))
                    key = _key_of(batch.kind, rec)
                    while True:
                        try:
                            prod.produce(topic, msg.value, key)
                            break
                        except BufferError:
                            prod.poll(0.05)
                prod.poll(0)
                result.sent[batch.kind] += len(batch.records)
                position = batch.position
                if time.monotonic() - last_saved >= opts.checkpoint_seconds:
                    durable()
                    run.save(position, 0)
                    last_saved = time.monotonic()
                _advance(bar, task, run, position, int(batch.ts[-1]))
            durable()
            bar.update(task, completed=max(_consumed(position), 1), total=max(
                _consumed(position), 1))  # fmt: skip
    except KeyboardInterrupt:
        durable()
        run.save(position, 0)
        console.print(f"interrupted; checkpoint saved, continue with --resume ({run.ckpt_path})")
        raise
    run.finish_stats()
    result.complete = True
    run.save(position, 0, done=True)
    return result


def _key_of(kind: str, record: Record) -> bytes | None:
    if not isinstance(record, dict):
        return None
    if kind == TRANSACTION:
        value = record.get("card_id")
    elif kind == EVENT:
        value = record.get("customer_id") or record.get("card_id")
    else:
        value = record.get("event_id")
    return str(value).encode() if value is not None else None


def run_replay(
    opts: ReplayOptions, settings: Settings | None = None, console: Console | None = None
) -> ReplayResult:
    """Replay to ``opts.to`` with ``settings`` (default: from the environment)."""
    if settings is None:
        from engine.settings import Settings

        settings = Settings()
    if opts.to == "kafka":
        return replay_kafka(opts, settings, console)
    return replay_inprocess(opts, settings, console=console)
