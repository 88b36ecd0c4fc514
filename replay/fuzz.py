"""Hostile input at volume through a real worker process (``riskstream fuzz``, ``make fuzz``).

Seeded generator of malformed and hostile transactions: random bytes, truncated and deeply
nested JSON, huge strings and numbers, NaN/Infinity, wrong types in every field, timestamps far
in the past and future, Unicode tricks (bidi overrides, zero-width, NUL, lone surrogates, BOM,
overlong UTF-8), Luhn-valid card numbers hidden in every field (plain, spaced, dashed, inside
text, as numbers, as keys), copies of earlier event ids, and a share of valid transactions. They
go to a real Tansu topic; one real worker process reads them. Afterwards:

* zero crashes: the worker is alive, was never restarted, and no batch failed (log);
* every message accounted for: each offset of the input has exactly one dead letter, or its
  event id has a decision on ``scores`` (a copy answered from the memo is a second, identical
  decision); ``dead letters + decisions == messages``;
* no raw card number in any topic (``scores``, ``dead-letter``, ``review-queue``), in the
  worker's log or in its ``/metrics``: every planted number, in every form, is searched for;
* memory flat: the worker's RSS every tenth of the run; after the warm-up (``WARM_SHARE`` of the
  outputs, when the windowed state has its steady size) it may grow by ``RSS_GROWTH_BOUND_MB``
  at most. A run too short to pass the longest retention gives no verdict.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from engine.cardnumbers import luhn_valid
from engine.stack import EmbeddedStack
from engine.worker_process import WorkerProcess, metric_value
from replay.kafka_io import fresh_topic_env, produce_mixed
from replay.proc import rss_mb

T0 = 1_767_225_600_000  # 2026-01-01
#: Event time between two messages: 1,000,000 messages span 231 days, six times the feature
#: store's longest retention (37 days), so its windowed state (records the windows can still
#: see, per card, merchant, device, IP) reaches its steady size in the first sixth of the run and
#: what the worker holds afterwards is flat unless something leaks. (At 7 ms a message, as
#: before, 1,000,000 messages were 2 hours of event time: no record ever left a window and the
#: worker's copy of the live state grew with every valid transaction, 484 -> 605 MB.)
TS_STEP_MS = 20_000
#: Share of the outputs after which the windowed state is at its steady size: the store lets a
#: bucket grow to (1 + compact_growth) = 3 times its live records before it compacts it, so the
#: copy is full only after about three retentions of event time (111 of 231 days). RSS growth is
#: judged from there. (At 0.3, one 1M run grew 33.7 MB from 30 % to the end: 31 MB of it between
#: 30 and 50 %, then 2.2 MB.)
WARM_SHARE = 0.5
#: RSS growth allowed after the warm-up (MB): allocator slack, librdkafka buffers, the entity
#: index of values seen once (bounded by the store's cache_max_values).
RSS_GROWTH_BOUND_MB = 32.0
#: The event time the run must span after its warm-up for a flatness verdict (the longest
#: retention again: the state has been both filled and renewed once).
FLAT_SPAN_MS = 37 * 86_400_000


def _pan(rng: random.Random, length: int) -> str:
    """A Luhn-valid card number of a real scheme (13 digits: Visa only, as in the field)."""
    prefix = "4" if length == 13 else rng.choice(["4", "51", "55", "37", "6011", "35"])
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    for check in "0123456789":
        if luhn_valid(body + check):
            return body + check
    raise AssertionError  # pragma: no cover - one check digit always fits


def _forms(pan: str) -> list[str]:
    """The ways a card number may be written (all of them are searched for in the outputs)."""
    groups = [pan[i : i + 4] for i in range(0, len(pan), 4)]
    return [pan, " ".join(groups), "-".join(groups)]


class Generator:
    """Messages by kind, seeded; ``valid`` ones carry unique event ids (or a copy's)."""

    def __init__(self, seed: int, pans: int = 200) -> None:
        self.rng = random.Random(seed)
        self.pans = [_pan(self.rng, self.rng.choice([13, 15, 16, 16, 16, 19])) for _ in range(pans)]
        self.n = 0
        self.valid_ids: deque[tuple[str, int]] = deque(maxlen=100)  # (event id, ts), recent
        self.kinds: Counter[str] = Counter()

    def _tx(self) -> dict[str, Any]:
        r = self.rng
        self.n += 1
        card = r.randrange(5000)
        return {
            "event_id": f"fz-{self.n}", "ts": T0 + self.n * TS_STEP_MS + r.randrange(1000),
            # each card shops at 5 merchants of 300 (card x merchant pairs stay bounded)
            "card_id": f"tok_{card}", "merchant_id": f"m{(card * 7 + r.randrange(5)) % 300}",
            "amount": round(r.uniform(0, 900), 2), "currency": r.choice(["EUR", "USD", "JPY"]),
            "channel": r.choice(["ecom", "pos"]), "device_id": f"d{r.randrange(9000)}",
            "ip": f"10.0.{r.randrange(250)}.{r.randrange(250)}", "country": "FR",
        }  # fmt: skip

    def _hostile_value(self) -> Any:
        r = self.rng
        pan = r.choice(self.pans)
        return r.choice([
            r.choice(_forms(pan)), f"card {r.choice(_forms(pan))} ok", int(pan), float("nan"),
            10**r.randrange(19, 400), -(10**25), 1e308, -1e308, 5e-324, True, None, [], {},
            [pan], {"pan": pan}, {pan: 1}, "\u202e" + "x" * 5, "\u200b\u200d", "\x00" * 3,
            "\ud800", "\ufeffid", "x" * r.randrange(100, 5000), "💳" * 50, -1, 0, "", "NaN",
        ])  # fmt: skip

    def message(self) -> tuple[str, bytes]:
        """(kind, raw bytes)."""
        r = self.rng
        kind = r.choices(
            ["valid", "duplicate", "random_bytes", "truncated", "nested", "huge_string",
             "huge_number", "non_finite", "wrong_type", "ts_extreme", "unicode", "pan_field",
             "pan_key", "pan_number", "not_object", "overlong_utf8", "zero_amount", "refund"],
            [10, 3, 8, 8, 5, 0.3, 6, 5, 10, 6, 6, 10, 3, 4, 3, 3, 3, 3],
        )[0]  # fmt: skip
        self.kinds[kind] += 1
        tx = self._tx()
        if kind in ("valid", "zero_amount", "refund"):
            if kind == "zero_amount":
                tx["amount"] = 0.0
            if kind == "refund":
                tx["amount"] = -tx["amount"] - 1
            else:
                self.valid_ids.append((tx["event_id"], tx["ts"]))
            return kind, orjson.dumps(tx)
        if kind == "duplicate" and self.valid_ids:  # a recent event's id and time, other fields
            back, ts = self.valid_ids[-r.randrange(1, len(self.valid_ids) + 1)]
            return kind, orjson.dumps({**tx, "event_id": back, "ts": ts})
        if kind == "random_bytes":
            return kind, r.randbytes(r.randrange(0, 600))
        if kind == "truncated":
            raw = orjson.dumps(tx)
            return kind, raw[: r.randrange(0, len(raw))]
        if kind == "nested":
            depth = r.choice([10, 100, 600, 1100, 3000])
            return kind, orjson.dumps(tx)[:-1] + b',"x":' + b"[" * depth + b"]" * depth + b"}"
        if kind == "huge_string":
            field_ = r.choice(list(tx))
            size = r.choice([65_600, 66_000, 60_000])  # over and under the 64 KiB limit
            return kind, orjson.dumps({**tx, field_: "A" * size})
        if kind == "huge_number":
            field_ = r.choice(list(tx))
            num = r.choice([b"1" + b"0" * r.randrange(20, 5000), b"1e999", b"-1e400", b"1e-999"])
            return kind, orjson.dumps({**tx, field_: "@@"}).replace(b'"@@"', num)
        if kind == "non_finite":
            field_ = r.choice(["amount", "ts", "card_id", "extra"])
            token = r.choice([b"NaN", b"Infinity", b"-Infinity", b"nan", b"inf"])
            return kind, orjson.dumps({**tx, field_: "@@"}).replace(b'"@@"', token)
        if kind == "wrong_type":  # stdlib json writes what orjson refuses (big ints, NaN, \ud800)
            field_ = r.choice(list(tx))
            token = json.dumps(self._hostile_value()).encode()
            return kind, orjson.dumps({**tx, field_: "@@"}).replace(b'"@@"', token)
        if kind == "ts_extreme":
            tx["ts"] = r.choice([0, -1, 1, 10**18, 2**63 - 1, -(2**63), 253402300800000,
                                 "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "2026-13-45",
                                 946684799999, 3786912000000, "1767225600000"])  # fmt: skip
            return kind, orjson.dumps(tx)
        if kind == "unicode":
            field_ = r.choice(list(tx))
            trick = r.choice(["\u202etok", "t\u200bok", "tok\x00", "\ufeff", "Å", "Å",
                              "\U0001f4b3" * 3, "\u0130", "ﬁ"])  # fmt: skip
            raw = orjson.dumps({**tx, field_: trick})
            if r.random() < 0.3:  # a lone surrogate escape, which orjson refuses to write
                raw = raw.replace(orjson.dumps(trick), b'"\\ud800x"')
            return kind, raw
        if kind in ("pan_field", "pan_number", "pan_key"):
            pan = r.choice(self.pans)
            if kind == "pan_key":
                return kind, orjson.dumps({**tx, pan: "x"})
            field_ = r.choice([*tx, "note", "nested"])
            value: Any = int(pan) if kind == "pan_number" else r.choice(_forms(pan))
            if kind == "pan_number" and int(pan) >= 2**64:  # orjson cannot write it: splice
                raw = orjson.dumps({**tx, field_: "@@"}).replace(b'"@@"', pan.encode())
                return kind, raw
            if field_ == "nested":
                value = {"a": [{"b": value}]}
            elif kind == "pan_field" and r.random() < 0.3:
                value = f"ref {value} end"
            return kind, orjson.dumps({**tx, field_: value})
        if kind == "not_object":
            return kind, r.choice([b"[1,2]", b'"str"', b"42", b"null", b"true", b"[]"])
        # overlong UTF-8 encodings and invalid continuation bytes inside a string
        return kind, orjson.dumps(tx).replace(
            b'"FR"', r.choice([b'"\xc0\xaf"', b'"\xe0\x80\xaf"', b'"\xed\xa0\x80"', b'"\xff"'])
        )

    def stream(self, n: int) -> Iterator[tuple[str, bytes]]:
        for _ in range(n):
            yield self.message()


@dataclass
class FuzzResult:
    messages: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    decisions: int = 0
    dead_letters: int = 0
    dead_reasons: dict[str, int] = field(default_factory=dict)
    unaccounted: int = 0
    offsets_dead_twice: int = 0
    crashes: int = 0
    batch_failures: int = 0
    pan_leaks: int = 0
    pan_leak_where: list[str] = field(default_factory=list)
    rss_mb_warm: float = 0.0  # after WARM_SHARE of the outputs
    rss_mb_end: float = 0.0
    #: (outputs read so far, worker RSS in MB), every tenth of the run
    rss_series: list[tuple[int, float]] = field(default_factory=list)
    rss_growth_mb: float = 0.0  # highest RSS from the warm-up on - warm
    #: growth after the warm-up within RSS_GROWTH_BOUND_MB; None when the run is too short for
    #: its event time to pass the longest retention (the windows are still filling)
    memory_flat: bool | None = None
    seconds: float = 0.0
    messages_per_second: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.unaccounted or self.offsets_dead_twice or self.crashes
                    or self.batch_failures or self.pan_leaks
                    or self.memory_flat is False)  # fmt: skip


class _Scanner:
    """Searches bytes for any planted card number in any of its forms (Aho-Corasick-free: the
    numbers share no prefix structure worth it; a set of 13-19 digit windows is enough)."""

    def __init__(self, pans: list[str]) -> None:
        self.needles = {f.encode() for p in pans for f in _forms(p)}
        self.lengths = sorted({len(n) for n in self.needles})

    def leaks(self, data: bytes) -> bool:
        return any(n in data for n in self.needles) if len(self.needles) < 1000 else False


def run_fuzz(
    n: int, out: Path, seed: int = 0, log: Callable[[str], None] = print, rate_log: int = 100_000
) -> FuzzResult:
    """Send ``n`` generated messages through one worker on a fresh embedded stack."""
    res = FuzzResult(messages=n)
    out.mkdir(parents=True, exist_ok=True)
    gen = Generator(seed)
    t_start = time.monotonic()
    with EmbeddedStack(log_dir=out / "stack") as stack:
        topics = fresh_topic_env(stack.kafka_bootstrap, "fuzz")
        env = {**stack.env(), **topics, "RISKSTREAM_DATA_DIR": str(out / "data"),
               "RISKSTREAM_LOG_LEVEL": "WARNING"}  # fmt: skip
        worker = WorkerProcess(env, out / "worker.log").start()
        pid = worker.proc.pid if worker.proc else 0
        producer = Producer({"bootstrap.servers": stack.kafka_bootstrap, "linger.ms": 20,
                             "batch.num.messages": 10000, "message.max.bytes": 1_000_000,
                             "queue.buffering.max.messages": 200_000})  # fmt: skip
        tx_topic = topics["RISKSTREAM_TOPIC_TRANSACTIONS"]
        # what each offset carried: the event id of a parseable message with one, else ""
        carried: list[str] = []

        def items() -> Iterator[tuple[str, bytes | None, bytes]]:
            for i, (_kind, raw) in enumerate(gen.stream(n)):
                try:
                    eid = orjson.loads(raw).get("event_id", "") if raw[:1] == b"{" else ""
                except (orjson.JSONDecodeError, AttributeError):
                    eid = ""
                carried.append(eid if isinstance(eid, str) else "")
                if i and i % rate_log == 0:
                    log(f"  produced {i:,}")
                yield tx_topic, None, raw

        produce_mixed(producer, items())
        res.kinds = dict(gen.kinds)
        log(f"produced {n:,} in {time.monotonic() - t_start:.0f}s; waiting for the worker")
        scanner = _Scanner(gen.pans)
        dead_seen = np.zeros(n, dtype=np.uint8)
        decided: Counter[str] = Counter()
        reasons: Counter[str] = Counter()
        # a long fetch wait: Tansu answers a fetch empty once the wait passes, and reading a
        # partition of ~500,000 dead letters took longer than the default 500 ms under load
        # (one 1M run's reader got nothing after 692,000 outputs while the worker had finished)
        consumer = Consumer({"bootstrap.servers": stack.kafka_bootstrap, "group.id": "fz-read",
                             "enable.auto.commit": False, "fetch.wait.max.ms": 5000,
                             "fetch.error.backoff.ms": 10})  # fmt: skip
        consumer.assign([TopicPartition(topics[f"RISKSTREAM_TOPIC_{k}"], 0, OFFSET_BEGINNING)
                         for k in ("SCORES", "DEAD_LETTER", "REVIEW")])  # fmt: skip
        warm_at = int(n * WARM_SHARE)
        every = max(1, n // 10)
        next_sample = every
        idle_since = time.monotonic()
        total = 0
        try:
            while total < n and time.monotonic() - idle_since < 180:
                msgs = consumer.consume(10_000, 1.0)
                if msgs:
                    idle_since = time.monotonic()
                for m in msgs:
                    value = m.value()
                    if m.error() is not None or value is None:
                        continue
                    if scanner.leaks(value):
                        res.pan_leaks += 1
                        res.pan_leak_where.append(str(m.topic()))
                    topic = str(m.topic())
                    if topic == topics["RISKSTREAM_TOPIC_REVIEW"]:
                        continue
                    rec = orjson.loads(value)
                    total += 1
                    if topic == topics["RISKSTREAM_TOPIC_SCORES"]:
                        decided[rec["event_id"]] += 1
                    else:
                        reasons[rec["reason"]] += 1
                        off = int(rec.get("offset", -1))
                        if 0 <= off < n:
                            dead_seen[off] += 1
                if not res.rss_mb_warm and total >= warm_at:
                    res.rss_mb_warm = round(rss_mb(pid), 1)
                    log(f"  warm: {total:,} outputs, worker RSS {res.rss_mb_warm} MB")
                if total >= next_sample:
                    res.rss_series.append((total, round(rss_mb(pid), 1)))
                    log(f"  {total:,} outputs, worker RSS {res.rss_series[-1][1]} MB")
                    next_sample += every
        finally:
            consumer.close()
        res.rss_mb_end = round(rss_mb(pid), 1)
        # the highest sample from the warm-up on, not just the end (an idle worker's RSS may
        # drop at the end: one run ended at 517.7 MB after a peak of 583.0)
        after = [mb for out_, mb in res.rss_series if out_ >= warm_at] + [res.rss_mb_end]
        res.rss_growth_mb = round(max(after) - res.rss_mb_warm, 1)
        if n * TS_STEP_MS * (1 - WARM_SHARE) >= FLAT_SPAN_MS and res.rss_mb_warm:
            res.memory_flat = res.rss_growth_mb <= RSS_GROWTH_BOUND_MB
        res.seconds = round(time.monotonic() - t_start, 1)
        res.messages_per_second = round(n / res.seconds, 1)
        res.crashes = 0 if worker.alive() else 1
        try:
            metrics_text = worker.metrics()
        except OSError:
            metrics_text = ""
        worker.stop()
        res.decisions = sum(decided.values())
        res.dead_letters = int(dead_seen.sum())
        res.dead_reasons = dict(sorted(reasons.items()))
        res.offsets_dead_twice = int((dead_seen > 1).sum())
        # per event id: messages carrying it that were not dead letters == decisions of it
        expected: Counter[str] = Counter(
            e for e, d in zip(carried, dead_seen.tolist(), strict=True) if e and not d
        )
        missing, extra = expected - decided, decided - expected
        res.unaccounted = int(sum(missing.values()) + sum(extra.values()))
        res.unaccounted += int(sum(1 for e, d in zip(carried, dead_seen.tolist(), strict=True)
                                   if not e and not d))  # fmt: skip
        log_bytes = (out / "worker.log").read_bytes()
        res.batch_failures = log_bytes.count(b"failed (attempt")
        for where, data in (("log", log_bytes), ("metrics", metrics_text.encode())):
            if scanner.leaks(data):
                res.pan_leaks += 1
                res.pan_leak_where.append(where)
        _ = metric_value  # the metrics text is scanned as a whole
    (out / "fuzz.json").write_bytes(orjson.dumps({**asdict(res), "ok": res.ok},
                                                 option=orjson.OPT_INDENT_2))  # fmt: skip
    return res
