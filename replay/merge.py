"""Merge transactions, account events and labels into one event-time-ordered stream of batches.

Each input file (Parquet, CSV or JSON lines, as :mod:`replay.sources` reads them) is read in
chunks and is expected to be sorted by ``ts``; the streams are merged like a k-way heap merge, a
run of items at a time, so memory holds one chunk per file (plus pending generated labels), never
a whole file. At equal ``ts`` the order is: account event, transaction, label (a label never
precedes the transaction it is about). Within one stream the file order is kept: rows that go back
in time are emitted where they are and counted in :attr:`MergeStats.out_of_order`.

Labels come from a labels file, or are generated from the transactions' ``is_fraud`` column with
a delay ``D``: the transaction's ``event_id``, ``ts = transaction ts + D``, ``is_fraud``, and
``source`` ``chargeback`` (fraud) or ``confirmed`` (legitimate). Generated labels wait in a heap
until their time comes, so they are emitted in ``ts`` order too. ``is_fraud`` and
``fraud_pattern`` are labels and are removed from the transaction records (the engine never sees
them); every other column is kept.

Malformed rows are not dropped: a row whose ``ts`` cannot be read keeps its place in the file
order (it takes the previous row's time for ordering) and goes to the engine as it is, which
dead-letters it exactly as the live path does; a JSON line that does not decode to an object is
passed on as its raw bytes.

Batches (:meth:`Merger.batches`) hold items of one kind. To keep transaction batches large when
labels or events interleave with them one by one, a label or account event may be *deferred* after
transactions that follow it, by at most ``max_defer_ms`` of event time (never moved earlier: a
label is never seen before its time, so there is no leakage): labels and events are merged at the
end of their ``max_defer_ms`` bucket of event time (buckets aligned on the epoch), so those of one
bucket come as one batch. ``max_defer_ms=0`` gives the strict event-time order.
The output is deterministic for the same inputs and options.

Resuming: :class:`MergePosition` (items consumed per stream; for generated labels, how many were
emitted and the last one's key) is attached to every batch; a :class:`Merger` built with that
position continues exactly after the batch (exact for inputs sorted by ``ts``).
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import orjson
import pandas as pd
import pyarrow.parquet as pq

from replay.sources import (
    MALFORMED,
    MALFORMED_RAW,
    PathLike,
    file_format,
    normalise,
    open_in,
    raw_chunks,
)

EVENT, TRANSACTION, LABEL = "event", "transaction", "label"
KINDS = (EVENT, TRANSACTION, LABEL)
_PRIORITY = {EVENT: 0, TRANSACTION: 1, LABEL: 2}
#: Columns of a transactions file that are labels, never sent with the transaction.
LABEL_COLUMNS = ("is_fraud", "fraud_pattern")
_NO_TS = -(2**62)  # ordering time of malformed rows before any readable one

Record = dict[str, Any] | bytes
IntArray = npt.NDArray[np.int64]


# -------------------------------------------------------------------------------- time parsing

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)", re.IGNORECASE)
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def parse_duration(text: str | int) -> int:
    """Milliseconds from ``"7d"``, ``"36h"``, ``"1d12h"``, ``"90s"``, ``"250ms"`` or plain ms.

    >>> parse_duration("1d12h"), parse_duration("250ms"), parse_duration(5)
    (129600000, 250, 5)
    """
    if isinstance(text, int):
        if text < 0:
            msg = "a duration cannot be negative"
            raise ValueError(msg)
        return text
    s = text.strip()
    if s.isdigit():
        return int(s)
    pos, total = 0, 0.0
    for m in _DURATION.finditer(s):
        if s[pos : m.start()].strip():
            break
        total += float(m.group(1)) * _UNIT_MS[m.group(2).lower()]
        pos = m.end()
    if pos == 0 or s[pos:].strip():
        msg = f"not a duration: {text!r} (use e.g. 7d, 36h, 90m, 30s, 250ms)"
        raise ValueError(msg)
    return int(total)


def parse_time(text: str | int) -> int:
    """Epoch milliseconds from epoch ms or an ISO-8601 date/time (UTC when it has no zone).

    >>> parse_time("2018-07-25"), parse_time("2018-07-25T00:00:00+02:00")
    (1532476800000, 1532469600000)
    """
    if isinstance(text, int):
        return text
    s = text.strip()
    if re.fullmatch(r"-?\d+", s):
        return int(s)
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00") if s.endswith("Z") else s)
    except ValueError:
        msg = f"not a time: {text!r} (use epoch milliseconds or ISO-8601, e.g. 2018-07-25)"
        raise ValueError(msg) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def _lenient_ts(value: Any) -> int | None:
    """Event time in ms if ``value`` is one, else None (the engine will say why)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return int(value) if np.isfinite(value) else None
    if isinstance(value, str):
        try:
            return parse_time(value)
        except (ValueError, OverflowError):
            return None
    if isinstance(value, pd.Timestamp | datetime):
        stamp = pd.Timestamp(value)
        stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp
        return int(stamp.value // 1_000_000)
    return None


# ----------------------------------------------------------------------------------- reading


@dataclass(slots=True)
class _Chunk:
    """Rows of one file chunk: ordering times, records and (transactions) ``is_fraud``."""

    ts: IntArray
    records: list[Record]
    #: ``is_fraud`` per row: 1, 0, or -1 when missing or unreadable (no label generated)
    fraud: npt.NDArray[np.int8] | None = None


@dataclass(slots=True)
class _Part:
    """Rows as read: ``ts`` is only meaningful where ``has_ts``."""

    ts: IntArray
    has_ts: npt.NDArray[np.bool_]
    records: list[Record]
    fraud: npt.NDArray[np.int8]

    @staticmethod
    def concat(parts: list[_Part]) -> _Part:
        if len(parts) == 1:
            return parts[0]
        return _Part(
            np.concatenate([p.ts for p in parts]),
            np.concatenate([p.has_ts for p in parts]),
            [r for p in parts for r in p.records],
            np.concatenate([p.fraud for p in parts]),
        )

    def __getitem__(self, sl: slice) -> _Part:
        return _Part(self.ts[sl], self.has_ts[sl], self.records[sl], self.fraud[sl])


def _bucket_end(ts: IntArray, defer_ms: int) -> IntArray:
    """The merge key of labels and events: the end of their ``defer_ms`` bucket (or ``ts``)."""
    if defer_ms <= 0:
        return ts
    out: IntArray = (ts // defer_ms + 1) * defer_ms
    return out


def _fraud_code(value: Any) -> int:
    return int(value) if isinstance(value, bool | np.bool_) else -1


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and value != value


def _records_of(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Row dicts with native values; missing values are left out of the record."""
    names = [str(c) for c in df.columns]
    cols = [df[c].tolist() for c in df.columns]
    records = [dict(zip(names, row, strict=True)) for row in zip(*cols, strict=True)]
    for name, c in zip(names, df.columns, strict=True):
        missing = np.flatnonzero(df[c].isna().to_numpy())
        for i in missing.tolist():
            del records[i][name]
        if df[c].dtype == object:
            for r in records:
                if name in r and isinstance(r[name], np.generic | pd.Timestamp):
                    r[name] = _plain(r[name])
    return records


def _raw_record(row: dict[str, Any]) -> dict[str, Any]:
    return {str(k): _plain(v) for k, v in row.items() if not _is_missing(v)}


def _frame_rows(df: pd.DataFrame, kind: str) -> _Part:
    """The rows of a frame; a frame that does not normalise is split in halves until the rows
    that break it are alone, and those are passed on unconverted (the engine judges them).
    A CSV line that did not split into fields is passed on as ``{MALFORMED, MALFORMED_RAW}``."""
    if MALFORMED in df.columns:
        why, raw = df[MALFORMED].to_numpy(), df[MALFORMED_RAW].to_numpy()
        broken = df[MALFORMED].notna().to_numpy()
        df = df.drop(columns=[MALFORMED, MALFORMED_RAW])
        if broken.any():
            return _with_malformed(df, broken, why, raw, kind)
    try:
        good = normalise(df.copy())
    except (ValueError, TypeError, OverflowError, pd.errors.ParserError):
        if len(df) == 1:
            raw = _raw_record(df.iloc[0].to_dict())
            t = _lenient_ts(raw.get("ts"))
            if t is not None:  # a CSV reads every value of a column with a bad one as text
                raw["ts"] = t
            fraud = np.array([_fraud_code(raw.get("is_fraud"))], dtype=np.int8)
            if kind == TRANSACTION:
                for col in LABEL_COLUMNS:
                    raw.pop(col, None)
            has = np.array([t is not None])
            return _Part(np.array([t or 0], dtype=np.int64), has, [raw], fraud)
        mid = len(df) // 2
        return _Part.concat([_frame_rows(df.iloc[:mid], kind), _frame_rows(df.iloc[mid:], kind)])
    n = len(good)
    fraud = np.full(n, -1, dtype=np.int8)
    if "is_fraud" in good.columns:
        col = good["is_fraud"]
        known = ~col.isna().to_numpy()
        fraud[known] = col[known].to_numpy(dtype=bool).astype(np.int8)
    if kind == TRANSACTION:
        good = good.drop(columns=[c for c in LABEL_COLUMNS if c in good.columns])
    if "ts" in good.columns:
        ts = good["ts"].to_numpy(dtype=np.int64)
        has = np.ones(n, dtype=bool)
    else:
        ts, has = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
    return _Part(ts, has, list(_records_of(good)), fraud)


def _with_malformed(
    df: pd.DataFrame, broken: npt.NDArray[np.bool_], why: Any, raw: Any, kind: str
) -> _Part:
    """Runs of readable rows through :func:`_frame_rows`, the broken ones as marker records."""
    parts: list[_Part] = []
    edges = np.flatnonzero(np.diff(broken.astype(np.int8))) + 1
    for lo, hi in zip([0, *edges.tolist()], [*edges.tolist(), len(broken)], strict=True):
        if not broken[lo]:
            parts.append(_frame_rows(df.iloc[lo:hi], kind))
            continue
        n = hi - lo
        records: list[Record] = [{MALFORMED: why[i], MALFORMED_RAW: raw[i]} for i in range(lo, hi)]
        parts.append(_Part(np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool), records,
                           np.full(n, -1, dtype=np.int8)))  # fmt: skip
    return _Part.concat(parts)


def _json_rows(lines: list[bytes], kind: str) -> _Part:
    n = len(lines)
    ts = np.zeros(n, dtype=np.int64)
    has = np.zeros(n, dtype=bool)
    fraud = np.full(n, -1, dtype=np.int8)
    records: list[Record] = []
    loads = orjson.loads
    for i, line in enumerate(lines):
        try:
            obj = loads(line)
        except orjson.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            t = _lenient_ts(obj.get("ts"))
            if t is not None:
                ts[i], has[i] = t, True
            if kind == TRANSACTION:
                fraud[i] = _fraud_code(obj.get("is_fraud"))
                for col in LABEL_COLUMNS:
                    obj.pop(col, None)
            records.append(obj)
        else:  # not JSON, or not an object: the engine dead-letters the raw bytes
            records.append(line.rstrip(b"\r\n"))
    return _Part(ts, has, records, fraud)


def _parts(path: Path, kind: str, batch_size: int) -> Iterator[_Part]:
    for chunk in raw_chunks(path, batch_size):
        if isinstance(chunk, pd.DataFrame):
            yield _frame_rows(chunk, kind)
        else:
            yield _json_rows(chunk, kind)


def read_chunks(
    path: PathLike,
    kind: str,
    batch_size: int = 50_000,
    skip: int = 0,
    limit: int | None = None,
) -> Iterator[_Chunk]:
    """Chunks of a file from row ``skip`` (up to ``limit`` rows), malformed rows included.

    For transactions, the label columns are taken out of the records (``fraud`` keeps
    ``is_fraud``). Rows without a readable ``ts`` take the previous row's for ordering.
    """
    last = _NO_TS
    seen = 0
    remaining = limit
    for part in _parts(Path(path), kind, batch_size):
        n = len(part.records)
        lo = min(n, max(0, skip - seen))
        seen += n
        if lo >= n:
            continue
        hi = n if remaining is None else min(n, lo + remaining)
        if lo or hi < n:
            part = part[lo:hi]
        if remaining is not None:
            remaining -= len(part.records)
        ts = part.ts
        if not part.has_ts.all():  # forward-fill the ordering time of malformed rows
            idx = np.where(part.has_ts, np.arange(len(ts)), -1)
            np.maximum.accumulate(idx, out=idx)
            ts = np.where(idx >= 0, ts[np.maximum(idx, 0)], last)
        if len(ts):
            last = int(ts[-1])
        yield _Chunk(ts, part.records, part.fraud if kind == TRANSACTION else None)
        if remaining is not None and remaining <= 0:
            return


def count_rows(path: PathLike) -> int:
    """Rows of a file: exact for Parquet, data lines for CSV and JSON lines (for progress)."""
    p = Path(path)
    fmt = file_format(p)
    if fmt == "parquet":
        pf = pq.ParquetFile(p)
        try:
            return int(pf.metadata.num_rows)
        finally:
            pf.close()
    n = 0
    with open_in(p) as f:
        while block := f.read(1 << 20):
            n += block.count(b"\n")
            last = block
    if n and not last.endswith(b"\n"):
        n += 1
    return max(0, n - 1) if fmt == "csv" else n


# ----------------------------------------------------------------------------------- streams


class _FileStream:
    """One file's rows, a chunk in memory at a time, in file order."""

    def __init__(
        self,
        kind: str,
        path: Path,
        chunk_rows: int,
        skip: int,
        on_chunk: Callable[[_Chunk, int], None] | None = None,
        defer_ms: int = 0,
    ) -> None:
        self.kind = kind
        self._defer = defer_ms if kind != TRANSACTION else 0
        self._keys: IntArray = np.zeros(0, dtype=np.int64)
        self.priority = _PRIORITY[kind]
        self.path = path
        self.consumed = skip
        self._chunks = read_chunks(path, kind, chunk_rows, skip)
        self._chunk: _Chunk | None = None
        self._pos = 0
        self._base = skip  # file row index of the current chunk's first row
        self._on_chunk = on_chunk
        self._last = _NO_TS
        self.out_of_order = 0
        self.done = False

    def head(self) -> int | None:
        while self._chunk is None or self._pos >= len(self._chunk.records):
            if self._chunk is not None:
                self._base += len(self._chunk.records)
            nxt = next(self._chunks, None)
            if nxt is None:
                self._chunk = None
                self.done = True
                return None
            self._chunk, self._pos = nxt, 0
            if len(nxt.ts):
                backwards = np.diff(np.concatenate(([self._last], nxt.ts))) < 0
                self.out_of_order += int(backwards.sum())
                self._last = int(nxt.ts[-1])
            if self._on_chunk is not None:
                self._on_chunk(nxt, self._base)
            self._keys = _bucket_end(nxt.ts, self._defer)
        return int(self._keys[self._pos])

    def take(self, bound: tuple[int, int] | None, limit: int) -> tuple[list[Record], IntArray]:
        """Items from the head while their key is below ``bound`` (at least one), <= ``limit``."""
        chunk = self._chunk
        assert chunk is not None  # noqa: S101 - head() was called first
        start = self._pos
        stop = min(len(chunk.records), start + limit)
        if bound is None:
            end = stop
        else:
            b_ts, b_prio = bound
            end = start + 1
            window = 32
            while end < stop:
                hi = min(stop, end + window)
                keys = self._keys[end:hi]
                ok = (keys < b_ts) if self.priority > b_prio else (keys <= b_ts)
                if ok.all():
                    end = hi
                    window *= 4
                else:
                    end += int(np.argmin(ok))
                    break
        self._pos = end
        self.consumed += end - start
        return chunk.records[start:end], chunk.ts[start:end]


class _LabelRun:
    """Labels of one transaction chunk, sorted by (ts, transaction row)."""

    __slots__ = ("event_ids", "fraud", "pos", "seq", "ts")

    def __init__(self, ts: IntArray, seq: IntArray, event_ids: list[str], fraud: Any) -> None:
        self.ts, self.seq, self.event_ids, self.fraud = ts, seq, event_ids, fraud
        self.pos = 0

    def key(self) -> tuple[int, int]:
        return int(self.ts[self.pos]), int(self.seq[self.pos])


class _GeneratedLabels:
    """Labels made from transactions' ``is_fraud`` at ``ts + delay``: a heap of sorted runs
    (one per transaction chunk), so that labels come out in (ts, row) order."""

    kind = LABEL
    priority = _PRIORITY[LABEL]

    def __init__(
        self,
        delay_ms: int,
        emitted: int = 0,
        last_key: tuple[int, int] | None = None,
        defer_ms: int = 0,
    ) -> None:
        self.delay = delay_ms
        self.defer = defer_ms
        self.heap: list[tuple[int, int, int]] = []  # (ts, seq, run id) of each run's head
        self.runs: dict[int, _LabelRun] = {}
        self._next_id = 0
        self.consumed = emitted
        self.last_key = last_key
        #: labels at or before this key were emitted before a resume
        self.after = last_key
        self.out_of_order = 0

    def add(self, chunk: _Chunk, base: int, after: tuple[int, int] | None = None) -> None:
        assert chunk.fraud is not None  # noqa: S101 - transaction chunks carry it
        recs = chunk.records
        ok = (chunk.fraud >= 0) & np.fromiter(
            (isinstance(r, dict) and isinstance(r.get("event_id"), str) for r in recs),
            dtype=bool, count=len(recs),
        )  # fmt: skip
        idx = np.flatnonzero(ok)
        ts = chunk.ts[idx] + self.delay
        seq = base + idx
        limit = after if after is not None else self.after
        if limit is not None:
            keep = (ts > limit[0]) | ((ts == limit[0]) & (seq > limit[1]))
            idx, ts, seq = idx[keep], ts[keep], seq[keep]
        if not len(idx):
            return
        if len(ts) > 1 and bool((np.diff(ts) < 0).any()):
            order = np.lexsort((seq, ts))
            idx, ts, seq = idx[order], ts[order], seq[order]
        event_ids = [str(recs[i]["event_id"]) for i in idx.tolist()]  # type: ignore[call-overload]
        run = _LabelRun(ts, seq, event_ids, chunk.fraud[idx].astype(bool))
        rid = self._next_id
        self._next_id += 1
        self.runs[rid] = run
        heapq.heappush(self.heap, (*run.key(), rid))

    def _key(self, ts: int) -> int:
        return (ts // self.defer + 1) * self.defer if self.defer > 0 else ts

    def head(self) -> int | None:
        return self._key(self.heap[0][0]) if self.heap else None

    def take(self, bound: tuple[int, int] | None, limit: int) -> tuple[list[Record], IntArray]:
        """Labels in (ts, row) order while their key is below ``bound`` (labels go last)."""
        out: list[Record] = []
        times: list[IntArray] = []
        heap = self.heap
        while heap and len(out) < limit:
            ts0, _, rid = heap[0]
            if out and bound is not None and self._key(ts0) >= bound[0]:
                break
            heapq.heappop(heap)
            run = self.runs[rid]
            stop = min(len(run.ts), run.pos + limit - len(out))
            if bound is not None:
                keys = _bucket_end(run.ts[run.pos : stop], self.defer)
                stop = max(run.pos + 1, min(stop, run.pos + int(np.searchsorted(
                    keys, bound[0], side="left"))))  # fmt: skip
            if heap:  # never pass another run's head
                h_ts, h_seq, _ = heap[0]
                k = run.pos + int(np.searchsorted(run.ts[run.pos : stop], h_ts, side="left"))
                while k < stop and run.ts[k] == h_ts and run.seq[k] < h_seq:
                    k += 1
                stop = max(run.pos + 1, min(stop, k))
            sl = slice(run.pos, stop)
            ts_run = run.ts[sl]
            for event_id, t, fraud in zip(run.event_ids[sl], ts_run.tolist(),
                                          run.fraud[sl].tolist(), strict=True):  # fmt: skip
                out.append({"event_id": event_id, "ts": t, "is_fraud": fraud,
                            "source": "chargeback" if fraud else "confirmed"})  # fmt: skip
            times.append(ts_run)
            self.last_key = (int(run.ts[stop - 1]), int(run.seq[stop - 1]))
            run.pos = stop
            if stop < len(run.ts):
                heapq.heappush(heap, (*run.key(), rid))
            else:
                del self.runs[rid]
        self.consumed += len(out)
        return out, np.concatenate(times) if times else np.zeros(0, dtype=np.int64)


# ------------------------------------------------------------------------------------- merge


@dataclass
class MergePosition:
    """Where a merge stands: items consumed per stream (emitted or filtered out)."""

    transactions: int = 0
    events: int = 0
    labels: int = 0
    #: (ts, transaction row) of the last generated label emitted
    label_last_key: tuple[int, int] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MergePosition:
        key = data.get("label_last_key")
        return cls(
            transactions=int(data.get("transactions", 0)),
            events=int(data.get("events", 0)),
            labels=int(data.get("labels", 0)),
            label_last_key=(int(key[0]), int(key[1])) if key else None,
        )


@dataclass
class MergeStats:
    emitted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    filtered: int = 0
    #: rows that went back in time within their own file
    out_of_order: dict[str, int] = field(default_factory=dict)


class Batch(NamedTuple):
    kind: str
    records: list[Record]
    #: ordering time of each record (epoch ms)
    ts: IntArray
    #: where the merge stands right after this batch (a merger built with it continues there)
    position: MergePosition


class Merger:
    """Event-time merge of a transactions file, an optional events file and labels."""

    def __init__(
        self,
        transactions: PathLike,
        events: PathLike | None = None,
        labels: PathLike | None = None,
        label_delay_ms: int | None = None,
        start_ms: int | None = None,
        until_ms: int | None = None,
        batch_size: int = 1000,
        max_defer_ms: int = 0,
        position: MergePosition | None = None,
        chunk_rows: int = 50_000,
    ) -> None:
        if labels is not None and label_delay_ms is not None:
            msg = "give either a labels file or a label delay, not both"
            raise ValueError(msg)
        if batch_size < 1:
            msg = "batch_size must be >= 1"
            raise ValueError(msg)
        if label_delay_ms is not None and label_delay_ms < 0:
            msg = "the label delay cannot be negative"
            raise ValueError(msg)
        pos = position or MergePosition()
        self.start_ms = start_ms
        self.until_ms = until_ms
        self.batch_size = batch_size
        self.max_defer_ms = max(0, max_defer_ms)
        self.stats = MergeStats()
        self._room = batch_size
        self._generated: _GeneratedLabels | None = None
        on_chunk: Callable[[_Chunk, int], None] | None = None
        if label_delay_ms is not None:
            gen = _GeneratedLabels(
                label_delay_ms, pos.labels, pos.label_last_key, self.max_defer_ms
            )
            if pos.transactions:  # labels of rows already consumed that were not emitted yet
                after = pos.label_last_key or (_NO_TS, -1)
                base = 0
                for chunk in read_chunks(transactions, TRANSACTION, chunk_rows, 0,
                                         pos.transactions):  # fmt: skip
                    gen.add(chunk, base, after)
                    base += len(chunk.records)
            self._generated = gen
            on_chunk = gen.add
        txn = _FileStream(TRANSACTION, Path(transactions), chunk_rows, pos.transactions, on_chunk)
        self._streams: list[_FileStream | _GeneratedLabels] = [txn]
        self._txn = txn
        self._events: _FileStream | None = None
        self._labels: _FileStream | None = None
        if events is not None:
            self._events = _FileStream(
                EVENT, Path(events), chunk_rows, pos.events, defer_ms=self.max_defer_ms
            )
            self._streams.append(self._events)
        if labels is not None:
            self._labels = _FileStream(
                LABEL, Path(labels), chunk_rows, pos.labels, defer_ms=self.max_defer_ms
            )
            self._streams.append(self._labels)
        if self._generated is not None:
            self._streams.append(self._generated)

    def position(self) -> MergePosition:
        gen = self._generated
        return MergePosition(
            transactions=self._txn.consumed,
            events=self._events.consumed if self._events else 0,
            labels=gen.consumed if gen else (self._labels.consumed if self._labels else 0),
            label_last_key=gen.last_key if gen else None,
        )

    def _out_of_order(self) -> bool:
        return any(s.out_of_order for s in self._streams)

    def runs(self) -> Iterator[tuple[str, list[Record], IntArray, MergePosition]]:
        """Runs of same-kind items, filtered by ``start``/``until``, each with the position
        before it. The order is the strict merge order of the keys (key, kind), where a
        transaction's key is its ts and a label's or event's is the end of its ``max_defer_ms``
        bucket of event time: a total order that does not depend on chunk or batch boundaries,
        so a resumed merge continues exactly."""
        lo, hi, defer = self.start_ms, self.until_ms, self.max_defer_ms
        txn = self._txn
        others = [s for s in self._streams if s is not txn]
        while True:
            t_head = txn.head()  # first: it generates the labels of the rows it loads
            heads = sorted(
                (h, s.priority, i) for i, s in enumerate(others) if (h := s.head()) is not None
            )
            if t_head is None and not heads:
                break
            if (
                hi is not None
                and (t_head is None or t_head >= hi)
                and (not heads or heads[0][0] >= hi + defer)  # keys are at most ts + defer
                and not self._out_of_order()
            ):
                break
            before = self.position()
            room = max(1, self._room)
            stream: _FileStream | _GeneratedLabels
            if t_head is not None and (
                not heads or (t_head, txn.priority) < (heads[0][0], heads[0][1])
            ):
                stream = txn
                bound = (heads[0][0], heads[0][1]) if heads else None
            else:
                stream = others[heads[0][2]]
                bound_keys = [(h[0], h[1]) for h in heads[1:2]]
                if t_head is not None:
                    bound_keys.append((t_head, txn.priority))
                bound = min(bound_keys) if bound_keys else None
            records, ts = stream.take(bound, room)
            if lo is not None or hi is not None:
                keep = np.ones(len(ts), dtype=bool)
                if lo is not None:
                    keep &= ts >= lo
                if hi is not None:
                    keep &= ts < hi
                if not keep.all():
                    self.stats.filtered += int((~keep).sum())
                    records = [r for r, k in zip(records, keep.tolist(), strict=True) if k]
                    ts = ts[keep]
            if records:
                self.stats.emitted[stream.kind] += len(records)
                yield stream.kind, records, ts, before
        for s in self._streams:
            if s.out_of_order:
                self.stats.out_of_order[s.kind] = s.out_of_order

    def batches(self) -> Iterator[Batch]:
        """Batches of one kind and at most ``batch_size`` items, in merge order."""
        size = self.batch_size
        kind: str | None = None
        records: list[Record] = []
        times: list[IntArray] = []
        self._room = size
        for k, recs, ts, before in self.runs():
            if kind is not None and k != kind:
                yield Batch(kind, records, np.concatenate(times), before)
                records, times = [], []
            kind = k
            records.extend(recs)
            times.append(ts)
            if len(records) >= size:
                yield Batch(kind, records, np.concatenate(times), self.position())
                kind, records, times = None, [], []
            self._room = size - len(records)
        if kind is not None and records:
            yield Batch(kind, records, np.concatenate(times), self.position())
