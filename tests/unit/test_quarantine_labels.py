"""Labels files (``--labels`` of train and backtest): bad rows quarantined, not fatal."""

from __future__ import annotations

from pathlib import Path

import orjson
import pandas as pd
import pytest

from replay.quarantine import BadRowError, load_labels

T0 = 1_767_225_600_000


def _write(tmp_path: Path, lines: list[bytes], name: str = "labels.jsonl") -> Path:
    path = tmp_path / name
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_bad_label_rows_are_quarantined_with_their_row_and_reason(tmp_path: Path) -> None:
    good = [orjson.dumps({"event_id": f"e{i}", "ts": T0 + i, "is_fraud": i % 2 == 0,
                          "source": "chargeback"}) for i in range(6)]  # fmt: skip
    lines = [
        good[0],
        b'{"event_id": "broken',  # not JSON
        good[1],
        orjson.dumps({"ts": T0, "is_fraud": True}),  # no event_id
        orjson.dumps({"event_id": "x", "ts": "yesterday", "is_fraud": True}),
        orjson.dumps({"event_id": "y", "ts": T0, "is_fraud": "maybe"}),
        orjson.dumps({"event_id": "4111111111111111", "ts": T0, "is_fraud": True}),
        good[2],
        orjson.dumps({"event_id": "e0", "ts": T0 + 9, "is_fraud": False}),  # a later verdict
    ]
    labels, quarantine = load_labels(_write(tmp_path, lines))
    assert labels["event_id"].tolist() == ["e0", "e1", "e2", "e0"]
    assert labels["is_fraud"].dtype == bool and labels["is_fraud"].tolist() == [True, False, True,
                                                                                False]  # fmt: skip
    assert list(labels.columns) == ["event_id", "ts", "is_fraud", "source"]
    rejected = quarantine.frame()
    assert rejected[["row", "reason"]].values.tolist() == [
        [1, "missing_field"], [3, "missing_field"], [4, "invalid_timestamp"],
        [5, "wrong_type"], [6, "card_number_detected"],
    ]  # fmt: skip
    assert "4111" not in " ".join(rejected["detail"])
    with pytest.raises(BadRowError, match="row 1: missing_field"):
        load_labels(_write(tmp_path, lines), strict=True)


def test_csv_labels_with_a_line_that_does_not_split(tmp_path: Path) -> None:
    lines = [b"event_id,ts,is_fraud", b"e1,%d,true" % T0, b"e2,%d,false,extra" % T0,
             b"e3,%d,1" % T0]  # fmt: skip
    labels, quarantine = load_labels(_write(tmp_path, lines, "labels.csv"))
    assert labels["event_id"].tolist() == ["e1", "e3"]
    assert labels["is_fraud"].tolist() == [True, True]
    assert quarantine.frame()[["row", "reason"]].values.tolist() == [[1, "malformed_row"]]


def test_a_file_without_the_label_columns_is_an_error_not_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "tx.parquet"
    pd.DataFrame({"event_id": ["a"], "ts": [T0]}).to_parquet(path)
    with pytest.raises(ValueError, match="missing column\\(s\\) is_fraud"):
        load_labels(path)


def test_the_final_label_is_the_latest_in_time_not_in_file_order() -> None:
    """A chargeback (later) overrides an analyst's verdict (earlier) wherever the rows sit in
    the file; train, backtest and rules backtest read the same truth."""
    import numpy as np

    from replay.quarantine import final_truth
    from replay.rules_backtest import _labels

    labels = pd.DataFrame({
        "event_id": ["a", "a", "b", "b", "c"],
        "ts": [T0 + 300, T0 + 200, T0 + 100, T0 + 400, T0 + 50],
        "is_fraud": [True, False, True, False, True],
    })  # fmt: skip
    ids = pd.Series(["a", "b", "c", "d"])
    assert final_truth(labels, ids).tolist() == [True, False, True, False]
    # without a ts column, file order decides
    assert final_truth(labels.drop(columns="ts"), ids).tolist() == [False, False, True, False]
    tx = pd.DataFrame({"event_id": ids, "ts": np.full(4, T0 + 350, dtype=np.int64)})
    fraud, mature, _ = _labels(tx, labels, None)
    assert fraud == {"a": True, "b": False, "c": True, "d": False}
    assert mature == {"a": True, "b": False, "c": True, "d": True}  # b's last label: after the end
