"""Decoding and validation: every bad message becomes a dead letter with a reason."""

from __future__ import annotations

import base64

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.cardnumbers import REDACTED, contains_pan, luhn_valid, redact_pans
from engine.schemas import (
    ACCOUNT_EVENT,
    LABEL,
    TRANSACTION,
    RawMessage,
    decode_batch,
    parse_ts,
)

PAN = "4111111111111111"  # a Luhn-valid test card number
GOOD = {
    "event_id": "e1",
    "ts": 1767225600000,
    "card_id": "card_1",
    "merchant_id": "m1",
    "amount": 12.5,
}


def msg(value: bytes | dict[str, object], offset: int = 0) -> RawMessage:
    raw = value if isinstance(value, bytes) else orjson.dumps(value)
    return RawMessage(raw, "transactions", partition=3, offset=offset)


def one_reason(value: bytes | dict[str, object]) -> str:
    out = decode_batch([msg(value)], TRANSACTION)
    assert out.records == []
    assert len(out.dead) == 1
    return out.dead[0].reason


def test_valid_transaction_keeps_unknown_fields_and_normalises_ts() -> None:
    out = decode_batch(
        [msg({**GOOD, "ts": "2026-01-01T00:00:00+00:00", "extra": [1]})], TRANSACTION
    )
    assert out.dead == []
    assert out.records[0]["ts"] == 1767225600000
    assert out.records[0]["extra"] == [1]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"not json", "not_json"),
        (b"\xff\xfe\x00", "not_json"),
        (b"[1,2]", "not_object"),
        (b'"a string"', "not_object"),
        ({k: v for k, v in GOOD.items() if k != "card_id"}, "missing_field"),
        ({k: v for k, v in GOOD.items() if k != "amount"}, "missing_field"),
        ({k: v for k, v in GOOD.items() if k != "ts"}, "missing_field"),
        ({**GOOD, "card_id": 12}, "wrong_type"),
        ({**GOOD, "amount": "12"}, "wrong_type"),
        ({**GOOD, "amount": True}, "wrong_type"),
        ({**GOOD, "country": 7}, "wrong_type"),
        ({**GOOD, "amount": -3.0}, "refund_not_supported"),
        ({**GOOD, "amount": 3.0, "type": "Refund"}, "refund_not_supported"),
        ({**GOOD, "amount": 3.0, "type": "reversal"}, "refund_not_supported"),
        (
            b'{"event_id":"e","ts":1767225600000,"card_id":"c","merchant_id":"m","amount":Infinity}',
            "not_json",
        ),
        # orjson refuses non-finite numbers (1e400, NaN, Infinity) at parse time.
        (
            b'{"event_id":"e","ts":1767225600000,"card_id":"c","merchant_id":"m","amount":1e400}',
            "not_json",
        ),
        ({**GOOD, "ts": "yesterday"}, "invalid_timestamp"),
        ({**GOOD, "ts": "2026-01-01T00:00:00"}, "invalid_timestamp"),
        ({**GOOD, "ts": 17}, "invalid_timestamp"),
        ({**GOOD, "ts": [1]}, "invalid_timestamp"),
    ],
)
def test_invalid_transactions_get_a_reason(value: bytes | dict[str, object], reason: str) -> None:
    assert one_reason(value) == reason


@pytest.mark.parametrize(
    "pan_value",
    [
        PAN,
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "5500005555555559",
        "378282246310005",
        "6011000990139424",
    ],
)
@pytest.mark.parametrize("field", ["card_id", "merchant_id", "note", "nested"])
def test_card_numbers_in_any_field_are_rejected_and_never_echoed(
    pan_value: str, field: str
) -> None:
    body: dict[str, object] = dict(GOOD)
    body[field] = {"deep": [pan_value]} if field == "nested" else f"x {pan_value} y"
    out = decode_batch([msg(body)], TRANSACTION)
    assert [d.reason for d in out.dead] == ["card_number_detected"]
    record = out.dead[0].to_record()
    digits = pan_value.replace(" ", "").replace("-", "")
    dumped = orjson.dumps(record).decode()
    assert digits not in dumped.replace(" ", "").replace("-", "")
    assert REDACTED in record["raw"]
    assert pan_value not in out.dead[0].detail


def test_card_number_as_a_json_number_is_rejected() -> None:
    raw = orjson.dumps({**GOOD, "ref": int(PAN)})
    assert one_reason(raw) == "card_number_detected"


def test_epoch_ms_timestamp_is_not_mistaken_for_a_card_number() -> None:
    ts = next(t for t in range(1767225600000, 1767225600010) if luhn_valid(str(t)))
    out = decode_batch([msg({**GOOD, "ts": ts})], TRANSACTION)
    assert out.dead == []


def test_oversize_payload() -> None:
    big = orjson.dumps({**GOOD, "pad": "x" * 2000})
    out = decode_batch([msg(big)], TRANSACTION, max_payload_bytes=1024)
    assert [d.reason for d in out.dead] == ["oversize"]


def test_duplicate_event_id_inside_a_batch() -> None:
    out = decode_batch([msg(GOOD, 0), msg({**GOOD, "amount": 3.0}, 1)], TRANSACTION)
    assert len(out.records) == 1 and out.records[0]["amount"] == 12.5
    assert [(d.reason, d.message.offset) for d in out.dead] == [("duplicate_event_id", 1)]


def test_dead_letter_record_has_origin_and_base64_for_binary() -> None:
    out = decode_batch([RawMessage(b"\xff\x00", "transactions", 2, 41)], TRANSACTION)
    rec = out.dead[0].to_record()
    assert (rec["topic"], rec["partition"], rec["offset"]) == ("transactions", 2, 41)
    assert rec["raw_encoding"] == "base64"
    assert base64.b64decode(rec["raw"]) == b"\xff\x00"
    assert rec["reason"] == "not_json"


def test_mixed_batch_keeps_order_of_valid_records() -> None:
    batch = [msg({**GOOD, "event_id": f"e{i}"}, i) if i % 3 else msg(b"{", i) for i in range(9)]
    out = decode_batch(batch, TRANSACTION)
    assert [r["event_id"] for r in out.records] == ["e1", "e2", "e4", "e5", "e7", "e8"]
    assert [d.message.offset for d in out.dead] == [0, 3, 6]
    assert len(out.arrived_at) == len(out.records)


def test_account_events_and_labels() -> None:
    ev = {"event_id": "a1", "ts": 1767225600000, "type": "login", "customer_id": "cu1"}
    assert decode_batch([msg(ev)], ACCOUNT_EVENT).dead == []
    no_owner = {k: v for k, v in ev.items() if k != "customer_id"}
    assert decode_batch([msg(no_owner)], ACCOUNT_EVENT).dead[0].reason == "missing_field"
    lab = {"event_id": "e1", "ts": 1767225600000, "is_fraud": True, "source": "chargeback"}
    assert decode_batch([msg(lab)], LABEL).dead == []
    assert decode_batch([msg({**lab, "is_fraud": "yes"})], LABEL).dead[0].reason == "wrong_type"


def test_parse_ts_accepts_zone_offsets() -> None:
    assert parse_ts("2026-01-01T01:00:00+01:00") == 1767225600000
    assert parse_ts(1767225600000.0) == 1767225600000


@given(st.binary(max_size=300))
def test_decode_never_raises_on_arbitrary_bytes(raw: bytes) -> None:
    out = decode_batch([RawMessage(raw, "transactions")], TRANSACTION)
    assert len(out.records) + len(out.dead) == 1


@given(
    st.dictionaries(
        st.text(max_size=8),
        st.one_of(
            st.none(),
            st.integers(-(2**63), 2**63 - 1),
            st.floats(),
            st.text(max_size=30),
            st.booleans(),
        ),
        max_size=8,
    )
)
def test_decode_never_raises_on_arbitrary_objects(obj: dict[str, object]) -> None:
    raw = orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS) if obj is not None else b"null"
    out = decode_batch([RawMessage(raw, "transactions")], TRANSACTION)
    assert len(out.records) + len(out.dead) == 1


def test_redaction_helpers() -> None:
    assert contains_pan(f"a{PAN}b") is False or contains_pan(f"a {PAN} b")
    assert redact_pans(f"x={PAN}".encode()) == f"x={REDACTED}".encode()
    assert redact_pans(b"order 1234567890123") == b"order 1234567890123"


@pytest.mark.parametrize("amount", [0, 0.0, -0.0])
def test_zero_amount_authorisations_are_valid(amount: float) -> None:
    out = decode_batch([msg({**GOOD, "amount": amount, "type": "verification"})], TRANSACTION)
    assert out.dead == [] and out.records[0]["amount"] == 0.0


def test_dead_letter_keeps_a_luhn_valid_timestamp_and_redacts_everything_else() -> None:
    ts = 1767227854976  # an epoch-ms time that passes Luhn by chance
    assert luhn_valid(str(ts))
    bad = {**GOOD, "ts": ts, "amount": "x", "note": str(ts), "nested": {"ts": PAN}}
    record = decode_batch([msg(bad)], TRANSACTION).dead[0].to_record()
    raw = orjson.loads(record["raw"])
    assert raw["ts"] == ts  # the event time survives
    assert raw["note"] == REDACTED and raw["nested"]["ts"] == REDACTED
    assert PAN not in record["raw"]
    # a PAN as the ts value is not a time the validator takes: redacted too
    record = decode_batch([msg({**GOOD, "ts": int(PAN)})], TRANSACTION).dead[0].to_record()
    assert PAN not in record["raw"] and f'"ts":{REDACTED}' in record["raw"]


def test_no_13_digit_card_number_is_a_valid_event_time() -> None:
    """``ts`` is not scanned for card numbers: every 13-digit PAN (Visa, leading 4) is beyond
    the accepted range, so none can pass as a time (and be echoed in ``scores``)."""
    from engine.schemas import MAX_TS_MS

    assert MAX_TS_MS <= 4_000_000_000_000
    assert one_reason({**GOOD, "ts": 4_000_000_000_006}) == "invalid_timestamp"


@pytest.mark.parametrize("extra", [b"[" * 40 + b"]" * 40, b'{"a":' * 300 + b"1" + b"}" * 300])
def test_nesting_orjson_cannot_write_back_is_refused_at_the_door(extra: bytes) -> None:
    """Found by the fuzz run: such a message passed the decoder, then failed the review-case
    write of every attempt of its batch ("Recursion limit reached")."""
    raw = orjson.dumps({**GOOD, "extra": "@@"}).replace(b'"@@"', extra)
    assert one_reason(raw) == "wrong_type"
    ok = orjson.dumps({**GOOD, "extra": "@@"}).replace(b'"@@"', b"[" * 20 + b"]" * 20)
    assert decode_batch([msg(ok)], TRANSACTION).dead == []
