"""The column-wise checks a replay makes of a whole file (the per-message decode's rules)."""

from __future__ import annotations

import pandas as pd
import pytest

from replay.inprocess import check_frame, feature_inputs


def _frame(**over: object) -> pd.DataFrame:
    row = {"event_id": "e1", "ts": 1_767_225_600_000, "card_id": "tok_1", "merchant_id": "m1",
           "amount": 12.5, "channel": None}  # fmt: skip
    rows = [dict(row), {**row, "event_id": "e2", **over}]
    return pd.DataFrame(rows)


def test_a_clean_frame_passes_and_missing_text_becomes_empty() -> None:
    df = _frame()
    check_frame(df)
    ids, ts, amount, ents = feature_inputs(df, ["card_id", "channel", "ip"])
    assert ids == ["e1", "e2"] and ts.tolist() == [1_767_225_600_000] * 2
    assert amount.tolist() == [12.5, 12.5]
    assert ents == {"card_id": ["tok_1", "tok_1"], "channel": ["", ""], "ip": ["", ""]}


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        ({"card_id": ""}, "wrong_type: row 1"),
        ({"merchant_id": None}, "missing_field: row 1"),
        ({"amount": -1.0}, "refund_not_supported: row 1"),
        ({"amount": None}, "invalid_amount: row 1"),
        ({"amount": float("nan")}, "invalid_amount: row 1"),
        ({"ts": 12}, "invalid_timestamp: row 1"),
        ({"card_id": "4111111111111111"}, "card_number_detected: row 1"),
        ({"channel": "pan 4111 1111 1111 1111"}, "card_number_detected: row 1"),
    ],
)
def test_the_first_bad_row_is_named_without_its_value(over: dict, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as err:
        check_frame(_frame(**over))
    assert "4111" not in str(err.value)


def test_a_missing_column_is_named() -> None:
    with pytest.raises(ValueError, match="no column 'amount'"):
        check_frame(_frame().drop(columns=["amount"]))
