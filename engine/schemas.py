"""Decode raw Kafka values into validated records; everything invalid becomes a dead letter.

Faust acks undecodable messages and Faust's own deserializers raise mid-stream, so agents take
raw bytes and every message goes through :func:`decode_batch`, which never raises on bad input:
each message is either a valid record or a :class:`DeadLetter` with a machine-readable reason.

>>> out = decode_batch([RawMessage(b'{"event_id":"e1","ts":1700000000000,'
...     b'"card_id":"c1","merchant_id":"m1","amount":12.5}', "transactions")], TRANSACTION)
>>> out.records[0]["amount"], out.dead
(12.5, [])
>>> decode_batch([RawMessage(b"nope", "transactions")], TRANSACTION).dead[0].reason
'not_json'
"""

from __future__ import annotations

import base64
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from engine.cardnumbers import contains_pan, may_contain_pan, redact_pans

Record = dict[str, Any]

# Reason codes carried by dead letters and the riskstream_dead_letter_total{reason} counter.
NOT_JSON = "not_json"
NOT_OBJECT = "not_object"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
INVALID_AMOUNT = "invalid_amount"
INVALID_TIMESTAMP = "invalid_timestamp"
CARD_NUMBER = "card_number_detected"
OVERSIZE = "oversize"
DUPLICATE = "duplicate_event_id"
PROCESSING_ERROR = "processing_error"
REFUND = "refund_not_supported"
#: a row of a file that does not split into its header's fields (files only: a CSV line)
MALFORMED_ROW = "malformed_row"
REASONS = (
    NOT_JSON, NOT_OBJECT, MISSING_FIELD, WRONG_TYPE, INVALID_AMOUNT, INVALID_TIMESTAMP,
    CARD_NUMBER, OVERSIZE, DUPLICATE, PROCESSING_ERROR, REFUND, MALFORMED_ROW,
)  # fmt: skip
#: Values of a transaction's optional ``type`` that move money back to the card: not scored
#: (a refund is not an authorisation risk decision), dead-lettered as ``refund_not_supported``.
REFUND_TYPES = frozenset({"refund", "reversal", "void", "credit", "return", "chargeback"})

#: Epoch-millisecond timestamps outside [2000-01-01, 2090-01-01) are refused as unparseable.
#: The end stays below 4,000,000,000,000 on purpose: every 13-digit card number is a Visa
#: number starting with 4, so no card number can pass as an event time (``ts`` is the one
#: field not scanned for card numbers).
MIN_TS_MS = 946_684_800_000
MAX_TS_MS = 3_786_912_000_000


@dataclass(slots=True)
class RawMessage:
    """One message as it came off a topic, with where it came from."""

    value: bytes
    topic: str
    partition: int = -1
    offset: int = -1
    #: Producer/broker timestamp (epoch ms); the start of the decision-latency clock.
    timestamp_ms: int | None = None
    received_at: float = field(default_factory=time.time)

    @property
    def arrived_at(self) -> float:
        """Epoch seconds when the event entered the system (Kafka timestamp if known)."""
        return self.timestamp_ms / 1000.0 if self.timestamp_ms else self.received_at


@dataclass(slots=True)
class DeadLetter:
    """A message that could not be accepted, and why."""

    reason: str
    detail: str
    message: RawMessage

    def to_record(self) -> Record:
        """The dead-letter topic's record; card numbers in the raw bytes are redacted first."""
        raw = redact_pans(self.message.value, _event_time(self.message.value))
        try:
            text, encoding = raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(raw).decode(), "base64"
        return {
            "reason": self.reason,
            "detail": self.detail,
            "topic": self.message.topic,
            "partition": self.message.partition,
            "offset": self.message.offset,
            "raw": text,
            "raw_encoding": encoding,
            "size_bytes": len(self.message.value),
            "received_at": self.message.received_at,
        }


def _event_time(raw: bytes) -> int | None:
    """The epoch-ms ``ts`` of a JSON object message, if it is one the validator takes as a time
    (a 13-digit time may pass Luhn: redaction must keep it, and only it)."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    ts = obj.get("ts") if isinstance(obj, dict) else None
    if isinstance(ts, int) and not isinstance(ts, bool) and MIN_TS_MS <= ts < MAX_TS_MS:
        return ts
    return None


class Invalid(Exception):  # noqa: N818 - control flow inside this module only
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Schema:
    """Required and optional fields of one topic's records."""

    name: str
    required_str: tuple[str, ...]
    optional_str: tuple[str, ...] = ()
    amount: bool = False
    bool_fields: tuple[str, ...] = ()
    one_of: tuple[str, ...] = ()


TRANSACTION = Schema(
    "transaction",
    required_str=("event_id", "card_id", "merchant_id"),
    optional_str=("customer_id", "currency", "channel", "device_id", "ip", "country", "mcc"),
    amount=True,
)
ACCOUNT_EVENT = Schema(
    "event",
    required_str=("event_id", "type"),
    optional_str=("customer_id", "card_id", "device_id", "ip", "country"),
    one_of=("customer_id", "card_id"),
)
LABEL = Schema(
    "label", required_str=("event_id",), optional_str=("source",), bool_fields=("is_fraud",)
)


def parse_ts(value: Any) -> int:
    """Event time as epoch milliseconds, from epoch ms or ISO-8601 with a zone.

    >>> parse_ts("2026-01-01T00:00:00Z")
    1767225600000
    """
    if isinstance(value, bool):
        raise Invalid(INVALID_TIMESTAMP, "ts: a boolean is not a timestamp")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise Invalid(INVALID_TIMESTAMP, "ts: not finite")
        ms = int(value)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise Invalid(INVALID_TIMESTAMP, "ts: not ISO-8601") from None
        if parsed.tzinfo is None:
            raise Invalid(INVALID_TIMESTAMP, "ts: ISO-8601 without a zone")
        ms = int(parsed.timestamp() * 1000)
    else:
        raise Invalid(
            INVALID_TIMESTAMP, f"ts: expected epoch ms or ISO-8601, got {type(value).__name__}"
        )
    if not MIN_TS_MS <= ms < MAX_TS_MS:
        raise Invalid(
            INVALID_TIMESTAMP, "ts: out of range 2000..2090 (epoch milliseconds expected)"
        )
    return ms


def _check_pans(obj: Any, path: str) -> None:
    if isinstance(obj, str):
        if contains_pan(obj):
            raise Invalid(CARD_NUMBER, f"{path}: looks like a card number (redacted)")
    elif isinstance(obj, bool):
        return
    elif isinstance(obj, int):
        if path != "ts" and contains_pan(str(obj)):
            raise Invalid(CARD_NUMBER, f"{path}: looks like a card number (redacted)")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _check_pans(k, path)
            _check_pans(v, f"{path}.{k}" if path else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _check_pans(v, f"{path}[{i}]")


#: Deepest nesting of objects/arrays accepted (orjson reads 1024 levels, writes 254).
MAX_DEPTH = 32


def _check_structure(obj: Any, path: str, depth: int = 0) -> None:
    """What orjson reads but cannot write back: nesting deeper than it writes. Such a message
    used to pass the decoder and then fail every attempt of its batch when its review case (the
    transaction in it) was written; found by the fuzz run."""
    if isinstance(obj, dict | list):
        if depth >= MAX_DEPTH:
            raise Invalid(WRONG_TYPE, f"{path}: nested deeper than {MAX_DEPTH} levels")
        items = obj.items() if isinstance(obj, dict) else enumerate(obj)
        for k, v in items:
            _check_structure(v, f"{path}.{k}" if path else str(k), depth + 1)


def validate(obj: Any, schema: Schema, may_hold_pan: bool, unusual: bool = True) -> Record:
    """A validated copy of ``obj`` (unknown fields kept, ``ts`` normalised to epoch ms).

    ``may_hold_pan`` / ``unusual``: the raw bytes may hold a card number / deep nesting (cheap
    pre-filters; when False the walk over the object is skipped).
    """
    if not isinstance(obj, dict):
        raise Invalid(NOT_OBJECT, f"expected a JSON object, got {type(obj).__name__}")
    if unusual:
        _check_structure(obj, "")
    if may_hold_pan:
        _check_pans(obj, "")
    for name in schema.required_str:
        value = obj.get(name)
        if value is None:
            raise Invalid(MISSING_FIELD, f"{name}: required")
        if not isinstance(value, str) or not value:
            raise Invalid(WRONG_TYPE, f"{name}: expected a non-empty string")
    for name in schema.optional_str:
        value = obj.get(name)
        if value is not None and not isinstance(value, str):
            raise Invalid(WRONG_TYPE, f"{name}: expected a string")
    if schema.one_of and all(obj.get(n) is None for n in schema.one_of):
        raise Invalid(MISSING_FIELD, f"one of {', '.join(schema.one_of)}: required")
    for name in schema.bool_fields:
        value = obj.get(name)
        if value is None:
            raise Invalid(MISSING_FIELD, f"{name}: required")
        if not isinstance(value, bool):
            raise Invalid(WRONG_TYPE, f"{name}: expected true or false")
    if "ts" not in obj:
        raise Invalid(MISSING_FIELD, "ts: required")
    record = dict(obj)
    record["ts"] = parse_ts(obj["ts"])
    if schema.amount:
        amount = obj.get("amount")
        if amount is None:
            raise Invalid(MISSING_FIELD, "amount: required")
        if isinstance(amount, bool) or not isinstance(amount, int | float):
            raise Invalid(WRONG_TYPE, "amount: expected a number")
        if not math.isfinite(amount):
            raise Invalid(INVALID_AMOUNT, "amount: must be a finite number >= 0")
        kind = obj.get("type")
        if amount < 0 or (isinstance(kind, str) and kind.lower() in REFUND_TYPES):
            raise Invalid(REFUND, "refunds/reversals (negative amount or type) are not scored")
        record["amount"] = float(amount)
    return record


@dataclass(slots=True)
class Decoded:
    """Valid records in arrival order (with when each arrived) and the dead letters."""

    records: list[Record]
    arrived_at: list[float]
    dead: list[DeadLetter]
    #: The message each record came from (for a dead letter decided after decoding).
    sources: list[RawMessage] = field(default_factory=list)


def decode_batch(
    messages: Iterable[RawMessage], schema: Schema, max_payload_bytes: int = 64 * 1024
) -> Decoded:
    """Split a batch into valid records (in order) and dead letters; never raises on bad input.

    A second message with an ``event_id`` already seen in the batch is a dead letter
    (``duplicate_event_id``): redeliveries across batches are found by the feature store (see
    :meth:`engine.service.ScoringService.process_transactions`).
    """
    ok: list[Record] = []
    arrived: list[float] = []
    bad: list[DeadLetter] = []
    sources: list[RawMessage] = []
    seen: set[str] = set()
    loads = orjson.loads
    for msg in messages:
        raw = msg.value
        try:
            if len(raw) > max_payload_bytes:
                raise Invalid(OVERSIZE, f"{len(raw)} bytes > limit {max_payload_bytes}")
            try:
                obj = loads(raw)
            except orjson.JSONDecodeError:
                raise Invalid(NOT_JSON, "not valid UTF-8 JSON") from None
            unusual = raw.count(b"[") + raw.count(b"{") > MAX_DEPTH
            record = validate(obj, schema, may_contain_pan(raw), unusual)
            eid = record["event_id"]
            if eid in seen:
                raise Invalid(DUPLICATE, f"event_id seen earlier in this batch ({eid[:64]})")
            seen.add(eid)
        except Invalid as exc:
            bad.append(DeadLetter(exc.reason, exc.detail, msg))
            continue
        ok.append(record)
        arrived.append(msg.arrived_at)
        sources.append(msg)
    return Decoded(ok, arrived, bad, sources)


def processing_failures(messages: Sequence[RawMessage], detail: str) -> list[DeadLetter]:
    """Dead letters for a batch that repeatedly failed downstream, so nothing is dropped."""
    return [DeadLetter(PROCESSING_ERROR, detail, m) for m in messages]
