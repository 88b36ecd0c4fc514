"""The queue as columns in memory: filter, rank and page 100,000 cases in milliseconds.

A web process (or the CLI) loads ``rs:review:index`` once and then reads only the change
stream (one XRANGE per refresh), so a page costs one small round trip plus numpy work, however
long the queue is. Ranking is by expected loss, highest first; ties by queue time, oldest first.

>>> idx = QueueIndex()
>>> idx.upsert([{"event_id": "a", "ts": 1, "queued_at": 10.0, "amount": 50.0, "currency": "EUR",
...     "merchant_id": "m1", "country": "FR", "channel": "web", "score": 0.6,
...     "decision": "review", "reasons": ["rule:large_amount"], "expected_loss": 30.0}], "open")
>>> [r["event_id"] for r in idx.query(QueueFilter(reason="rule:large_amount")).rows]
['a']
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import redis

from engine.review.store import CHANGES_KEY, INDEX_KEY, NEEDINFO_KEY, QUEUE_KEY

STATUSES = ("open", "needinfo")
_NUMERIC = ("expected_loss", "amount", "score", "queued_at")
_CATEGORICAL = ("merchant_id", "country", "decision", "status")


@dataclass
class QueueFilter:
    """What the queue page and ``riskstream review list`` filter on (empty = no filter)."""

    status: str = "open"
    decision: str = ""
    reason: str = ""
    merchant: str = ""
    country: str = ""
    amount_min: float | None = None
    amount_max: float | None = None
    #: Age in the queue, in minutes.
    older_than: float | None = None
    newer_than: float | None = None
    page: int = 1
    size: int = 50

    def as_params(self) -> dict[str, str]:
        """Non-empty fields as query parameters (for paging links)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v not in (None, "") and f.name != "page":
                out[f.name] = f"{v:g}" if isinstance(v, float) else str(v)
        return out


@dataclass
class QueuePage:
    rows: list[dict[str, Any]]
    total: int
    page: int
    pages: int
    version: str
    seconds: float = 0.0
    facets: dict[str, list[tuple[str, int]]] = field(default_factory=dict)


class QueueIndex:
    """Columnar copy of the open and needs-more-info cases; thread-safe."""

    def __init__(self, capacity: int = 1024) -> None:
        self._lock = threading.Lock()
        self.version = "0-0"
        self._reset(capacity)

    def _reset(self, capacity: int) -> None:
        self._n = 0
        self._cap = capacity
        self._num = {k: np.zeros(capacity) for k in _NUMERIC}
        self._cat = {k: np.zeros(capacity, dtype=np.int32) for k in _CATEGORICAL}
        self._codes: dict[str, dict[str, int]] = {k: {} for k in _CATEGORICAL}
        self._alive = np.zeros(capacity, dtype=bool)
        #: Each case's summary as stored (JSON bytes): decoded only for the rows a page shows.
        self._rows: list[bytes | None] = []
        self._pos: dict[str, int] = {}
        self._postings: dict[str, list[int]] = {}

    def __len__(self) -> int:
        return len(self._pos)

    def _code(self, column: str, value: str) -> int:
        codes = self._codes[column]
        c = codes.get(value)
        if c is None:
            c = codes[value] = len(codes) + 1  # 0 = never matches a filter value
        return c

    def _grow(self, need: int) -> None:
        if need <= self._cap:
            return
        cap = max(need, self._cap * 2)
        for cols in (self._num, self._cat):
            for k, a in cols.items():
                b = np.zeros(cap, dtype=a.dtype)
                b[: self._n] = a[: self._n]
                cols[k] = b
        alive = np.zeros(cap, dtype=bool)
        alive[: self._n] = self._alive[: self._n]
        self._alive = alive
        self._cap = cap

    def upsert(self, summaries: Iterable[Mapping[str, Any]], status: str) -> None:
        with self._lock:
            self._upsert(((s, orjson.dumps(s)) for s in summaries), status)

    def _upsert(self, items: Iterable[tuple[Mapping[str, Any], bytes]], status: str) -> None:
        for s, raw in items:
            eid = s["event_id"]
            old = self._pos.get(eid)
            if old is not None:
                self._kill(eid)
            row = self._n
            self._grow(row + 1)
            self._n += 1
            for k in _NUMERIC:
                self._num[k][row] = float(s[k])
            for k in ("merchant_id", "country", "decision"):
                self._cat[k][row] = self._code(k, str(s[k]))
            self._cat["status"][row] = self._code("status", status)
            self._alive[row] = True
            self._rows.append(raw)
            self._pos[eid] = row
            for r in set(s["reasons"]):
                self._postings.setdefault(r, []).append(row)

    def _kill(self, eid: str) -> None:
        row = self._pos.pop(eid, None)
        if row is not None:
            self._alive[row] = False
            self._rows[row] = None

    def remove(self, event_ids: Iterable[str]) -> None:
        with self._lock:
            for e in event_ids:
                self._kill(e)

    def _compact(self) -> None:
        """Drop dead rows once they outnumber live ones (postings would only grow)."""
        dead = self._n - len(self._pos)
        if dead <= max(1024, len(self._pos)):
            return
        codes = {c: v for v, c in self._codes["status"].items()}
        status = self._cat["status"]
        live = [(r, codes[int(status[i])]) for i, r in enumerate(self._rows) if r is not None]
        self._reset(max(1024, len(live) * 2))
        for st in STATUSES:
            self._upsert(((orjson.loads(r), r) for r, s in live if s == st), st)

    # -- keeping current with Redis ------------------------------------------------------------

    def load(self, client: redis.Redis) -> None:
        """Everything, from scratch: remember the change stream's position first so nothing
        written meanwhile is missed (replaying a change twice is harmless)."""
        last: Any = client.xrevrange(CHANGES_KEY, count=1)
        pipe = client.pipeline(transaction=False)
        pipe.hgetall(INDEX_KEY)
        pipe.zrange(QUEUE_KEY, 0, -1)
        pipe.zrange(NEEDINFO_KEY, 0, -1)
        summaries, open_ids, info_ids = pipe.execute()
        with self._lock:
            self._reset(max(1024, len(summaries) * 2))
            for ids, status in ((open_ids, "open"), (info_ids, "needinfo")):
                rows = (summaries.get(i) for i in ids)
                self._upsert(((orjson.loads(r), r) for r in rows if r is not None), status)
            self.version = last[0][0].decode() if last else "0-0"

    def refresh(self, client: redis.Redis) -> bool:
        """Apply the changes since the last refresh; True if anything changed."""
        entries: Any = client.xrange(CHANGES_KEY, min=f"({self.version}", count=10_000)
        if not entries:
            return False
        first = entries[0][0].decode()
        if self.version != "0-0" and not _follows(client, self.version, first):
            self.load(client)  # fell behind the trimmed stream
            return True
        adds: list[str] = []
        moves: list[str] = []
        removes: list[str] = []
        for _, f in entries:
            op = f[b"op"].decode()
            ids = orjson.loads(f[b"ids"])
            {"add": adds, "needinfo": moves, "remove": removes}.get(op, removes).extend(ids)
        pipe = client.pipeline(transaction=False)
        wanted = list(dict.fromkeys(adds + moves))
        pipe.hmget(INDEX_KEY, wanted) if wanted else pipe.ping()
        for e in wanted:
            pipe.zscore(QUEUE_KEY, e)
        replies = pipe.execute()
        raw = replies[0] if wanted else []
        in_queue = replies[1:]
        with self._lock:
            for e in removes:
                self._kill(e)
            for e, r, q in zip(wanted, raw, in_queue, strict=True):
                if r is None:
                    self._kill(e)
                    continue
                self._upsert([(orjson.loads(r), r)], "open" if q is not None else "needinfo")
            self.version = entries[-1][0].decode()
            self._compact()
        if len(entries) == 10_000:
            self.refresh(client)
        return True

    # -- querying -----------------------------------------------------------------------------

    def oldest_queued_at(self) -> float | None:
        with self._lock:
            n = self._n
            mask = self._alive[:n] & (self._cat["status"][:n] == self._codes["status"].get("open"))
            if not mask.any():
                return None
            return float(self._num["queued_at"][:n][mask].min())

    def query(self, flt: QueueFilter, now: float | None = None) -> QueuePage:
        t0 = time.perf_counter()
        now = time.time() if now is None else now
        with self._lock:
            n = self._n
            mask = self._alive[:n].copy()
            for col, value in (
                ("status", flt.status), ("decision", flt.decision),
                ("merchant_id", flt.merchant), ("country", flt.country),
            ):  # fmt: skip
                if value:
                    mask &= self._cat[col][:n] == self._codes[col].get(value, -1)
            if flt.reason:
                hit = np.zeros(n, dtype=bool)
                hit[np.asarray(self._postings.get(flt.reason, []), dtype=np.int64)] = True
                mask &= hit
            amount = self._num["amount"][:n]
            if flt.amount_min is not None:
                mask &= amount >= flt.amount_min
            if flt.amount_max is not None:
                mask &= amount <= flt.amount_max
            queued = self._num["queued_at"][:n]
            if flt.older_than is not None:
                mask &= queued <= now - flt.older_than * 60
            if flt.newer_than is not None:
                mask &= queued >= now - flt.newer_than * 60
            idx = np.flatnonzero(mask)
            total = len(idx)
            size = max(1, min(flt.size, 500))
            pages = max(1, -(-total // size))
            page = min(max(1, flt.page), pages)
            start = (page - 1) * size
            order = _top(idx, self._num["expected_loss"][:n], queued, start + size)
            status_names = {c: v for v, c in self._codes["status"].items()}
            status = self._cat["status"]
            picked = [(self._rows[i], int(status[i])) for i in order[start : start + size]]
            version = self.version
        rows = [{**orjson.loads(r or b"{}"), "status": status_names[c]} for r, c in picked]
        for r in rows:
            r["age_seconds"] = max(0.0, now - r["queued_at"])
        return QueuePage(rows, total, page, pages, version, time.perf_counter() - t0)

    def facets(self, limit: int = 200) -> dict[str, list[tuple[str, int]]]:
        """Values to offer in the filter drop-downs, most frequent first (open cases)."""
        with self._lock:
            n = self._n
            alive = self._alive[:n] & (self._cat["status"][:n] == self._codes["status"].get("open"))
            out: dict[str, list[tuple[str, int]]] = {}
            for col in ("decision", "country"):
                counts = np.bincount(self._cat[col][:n][alive], minlength=1)
                names = {c: v for v, c in self._codes[col].items()}
                out[col] = sorted(
                    ((names[c], int(k)) for c, k in enumerate(counts) if k and c in names),
                    key=lambda t: -t[1],
                )[:limit]
            reasons = []
            for r, rows in self._postings.items():
                k = int(self._alive[np.asarray(rows, dtype=np.int64)].sum()) if rows else 0
                if k:
                    reasons.append((r, k))
            out["reason"] = sorted(reasons, key=lambda t: -t[1])[:limit]
        return out


def _top(idx: npt.NDArray[np.int64], loss: npt.NDArray[np.float64],
         queued: npt.NDArray[np.float64], k: int) -> npt.NDArray[np.int64]:  # fmt: skip
    """The first ``k`` of ``idx`` by expected loss desc, then queue time asc."""
    if len(idx) > 4 * k:  # a partial sort: only what the page needs is ordered
        part = np.argpartition(-loss[idx], k - 1)[:k]
        cut = loss[idx[part]].min()
        idx = idx[loss[idx] >= cut]
    order = np.lexsort((queued[idx], -loss[idx]))
    return idx[order][:k]


def _follows(client: redis.Redis, version: str, first: str) -> bool:
    """Whether ``first`` is the very next entry after ``version`` still in the stream (nothing
    trimmed between them)."""
    if client.xrange(CHANGES_KEY, min=version, max=version):
        return True
    oldest: Any = client.xrange(CHANGES_KEY, count=1)
    return bool(oldest) and _id(oldest[0][0].decode()) <= _id(version)


def _id(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def ids_of(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return [str(r["event_id"]) for r in rows]
