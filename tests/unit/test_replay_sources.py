"""Transaction files: identical round trips in every format, streaming reads, normalisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replay.quarantine import load_transactions
from replay.simulate import simulate
from replay.sources import (
    file_format,
    iter_batches,
    raw_chunks,
    read_transactions,
    write_transactions,
)

SUFFIXES = [".parquet", ".csv", ".jsonl", ".json", ".csv.gz", ".jsonl.gz"]


@pytest.fixture(scope="module")
def df() -> pd.DataFrame:
    return simulate(days=3, seed=5, n_customers=800, n_merchants=150)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_round_trip_identical(df: pd.DataFrame, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"tx{suffix}"
    write_transactions(df, path)
    back = read_transactions(path)
    pd.testing.assert_frame_equal(back, df, check_exact=True)
    assert back["ts"].dtype == np.int64
    assert back["amount"].dtype == np.float64
    assert back["is_fraud"].dtype == bool
    assert back["event_id"].dtype == df["event_id"].dtype


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("batch_size", [1000, 4096])
def test_iter_batches_cover_all_rows(
    df: pd.DataFrame, tmp_path: Path, suffix: str, batch_size: int
) -> None:
    path = tmp_path / f"tx{suffix}"
    write_transactions(df, path)
    parts = list(iter_batches(path, batch_size))
    assert all(0 < len(p) <= batch_size for p in parts)
    assert sum(len(p) for p in parts) == len(df)
    assert all(p.index[0] == 0 for p in parts)
    pd.testing.assert_frame_equal(pd.concat(parts, ignore_index=True), df, check_exact=True)


def test_parquet_is_streamed_by_row_group(df: pd.DataFrame, tmp_path: Path) -> None:
    big = pd.concat([df] * 12, ignore_index=True)
    big["event_id"] = [f"e{i}" for i in range(len(big))]
    path = tmp_path / "big.parquet"
    write_transactions(big, path)
    assert pq.ParquetFile(path).metadata.num_row_groups > 1
    it = iter_batches(path, 500)
    first = next(it)
    assert len(first) == 500
    assert first["event_id"].iloc[0] == "e0"
    assert sum(len(p) for p in it) == len(big) - 500


def test_file_format_by_suffix() -> None:
    assert file_format("a/b.parquet") == "parquet"
    assert file_format("x.PQ") == "parquet"
    assert file_format("x.csv") == "csv"
    assert file_format("x.csv.gz") == "csv"
    assert file_format("x.jsonl") == file_format("x.json") == file_format("x.ndjson") == "jsonl"
    for bad in ("x.txt", "x", "x.gz", "x.parquet.gz"):
        with pytest.raises(ValueError, match="unknown transaction file type"):
            file_format(bad)


def test_write_creates_parent_directories(df: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "tx.parquet"
    write_transactions(df.head(10), path)
    assert len(read_transactions(path)) == 10


def test_jsonl_is_one_object_per_line(df: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "tx.jsonl"
    write_transactions(df.head(5), path)
    lines = path.read_bytes().splitlines()
    assert len(lines) == 5
    first = orjson.loads(lines[0])
    assert first["event_id"] == df["event_id"].iloc[0]
    assert isinstance(first["ts"], int)
    assert isinstance(first["is_fraud"], bool)


def test_text_that_looks_numeric_stays_text(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "event_id": ["001", "2"],
            "ts": [1_767_225_600_000, 1_767_225_600_001],
            "card_id": ["c1", "c2"],
            "merchant_id": ["00042", "NA"],
            "amount": [0.1 + 0.2, 12.5],
            "mcc": ["0742", "5411"],
            "country": ["NA", "DE"],
            "fraud_pattern": ["", "card_testing"],
            "is_fraud": [False, True],
        }
    )
    frame = read_transactions(_write(frame, tmp_path / "src.parquet"))
    for suffix in (".csv", ".jsonl"):
        back = read_transactions(_write(frame, tmp_path / f"t{suffix}"))
        pd.testing.assert_frame_equal(back, frame, check_exact=True)
        assert back["mcc"].tolist() == ["0742", "5411"]
        assert back["country"].tolist() == ["NA", "DE"]


def test_awkward_text_round_trips(tmp_path: Path) -> None:
    values = ["a\rb", "c\r\nd", "e\nf", 'x"y,z', " lead ", "nan", "None", "null", "\u2028", "é€"]
    n = len(values)
    frame = pd.DataFrame(
        {
            "event_id": values,
            "ts": np.arange(n, dtype=np.int64) + 1_767_225_600_000,
            "card_id": ["c"] * n,
            "merchant_id": values[::-1],
            "amount": np.full(n, 9.99),
        }
    )
    frame = read_transactions(_write(frame, tmp_path / "src.parquet"))
    for suffix in (".csv", ".jsonl", ".csv.gz"):
        back = read_transactions(_write(frame, tmp_path / f"t{suffix}"))
        pd.testing.assert_frame_equal(back, frame, check_exact=True)
        batches = list(iter_batches(tmp_path / f"t{suffix}", 3))
        pd.testing.assert_frame_equal(pd.concat(batches, ignore_index=True), frame)


def _write(frame: pd.DataFrame, path: Path) -> Path:
    write_transactions(frame, path)
    return path


def test_iso_timestamps_missing_fields_and_unknown_columns(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(
        b'{"event_id":"e1","ts":"2026-01-01T01:00:00+01:00","card_id":"c1","merchant_id":"m1",'
        b'"amount":5,"extra":{"k":1}}\n'
        b"\n"
        b'{"event_id":"e2","ts":"2026-01-01T00:00:01Z","card_id":"c2","merchant_id":"m1",'
        b'"amount":7.25,"device_id":"d9","extra":null}\n'
    )
    out = read_transactions(path)
    assert out["ts"].tolist() == [1_767_225_600_000, 1_767_225_601_000]
    assert out["ts"].dtype == np.int64
    assert out["amount"].dtype == np.float64
    assert out["device_id"].isna().tolist() == [True, False]
    assert out["extra"].tolist()[0] == {"k": 1}

    csv = tmp_path / "in.csv"
    csv.write_text("event_id,ts,card_id,merchant_id,amount\ne1,2026-01-01T00:00:00Z,c1,m1,3\n")
    assert read_transactions(csv)["ts"].tolist() == [1_767_225_600_000]


text = st.text(
    st.one_of(st.characters(exclude_categories=["Cs"]), st.sampled_from('\r\n",')), max_size=12
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(
        st.tuples(
            text,
            st.integers(946_684_800_000, 4_102_444_799_999),
            st.floats(min_value=1e-6, max_value=1e9, allow_nan=False),
            st.booleans(),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_round_trip_arbitrary_values(
    tmp_path: Path, rows: list[tuple[str, int, float, bool]]
) -> None:
    frame = pd.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(len(rows))],
            "ts": np.array([r[1] for r in rows], dtype=np.int64),
            "card_id": [r[0] for r in rows],
            "merchant_id": ["m"] * len(rows),
            "amount": [r[2] for r in rows],
            "is_fraud": [r[3] for r in rows],
        }
    )
    frame = read_transactions(_write(frame, tmp_path / "h.parquet"))
    for suffix in (".csv", ".jsonl"):
        back = read_transactions(_write(frame, tmp_path / f"h{suffix}"))
        pd.testing.assert_frame_equal(back, frame, check_exact=True)


def test_bad_batch_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        next(iter_batches(tmp_path / "x.parquet", 0))


def test_csv_lines_that_do_not_split_are_rows_not_errors(df: pd.DataFrame, tmp_path: Path) -> None:
    """Too many fields, too few, a quote that never closes, one that closes on a stray quote
    lines later, binary junk: each is one malformed row (numbered like every other row, blank
    lines not counted), the rows around it read as they would without it; a quoted field that
    spans lines stays one row. ``lenient=False`` names the first bad row."""
    clean = df.iloc[:40].reset_index(drop=True)
    clean.loc[5, "merchant_id"] = "two\nlines, quoted"
    good = tmp_path / "good.csv"
    write_transactions(clean, good)
    lines = good.read_bytes().splitlines(keepends=True)
    header, body = lines[0], lines[1:]
    rows: list[bytes] = []  # one entry per row of the file (a spanning row is two lines)
    i = 0
    while i < len(body):
        if body[i].count(b'"') % 2:
            rows.append(body[i] + body[i + 1])
            i += 2
        else:
            rows.append(body[i])
            i += 1
    assert len(rows) == len(clean)
    junk = {
        3: rows[3].rstrip(b"\n") + b",extra,fields\n",
        10: b"only,three,fields\n",
        12: b'"never closed,' + rows[12],
        20: b'stray " quote,' + rows[20],
        30: b"\x00\x01binary,junk\n",
    }
    out, planted, n = [header], [], 0  # n: rows so far (header and blank lines excluded)
    for k, row in enumerate(rows):
        out.append(row)
        n += 1
        if k in junk:
            planted.append(n)
            out.append(junk[k])
            n += 1
        if k == 15:
            out.append(b"\n")  # blank: not a row
    dirty = tmp_path / "dirty.csv"
    dirty.write_bytes(b"".join(out))
    back = read_transactions(dirty, lenient=True)
    assert len(back) == len(clean) + len(junk)
    broken = back["_malformed"].notna().to_numpy()
    assert np.flatnonzero(broken).tolist() == planted
    kept, quarantine = load_transactions(dirty)  # what train and backtest read
    pd.testing.assert_frame_equal(kept, clean, check_exact=True)
    rejected = quarantine.frame()
    assert rejected["row"].tolist() == planted
    assert set(rejected["reason"]) == {"malformed_row"}
    assert not rejected["detail"].str.contains("binary").any()  # the reason, never the value
    assert b"binary,junk" in back["_malformed_raw"].iloc[planted[-1]]
    with pytest.raises(ValueError, match=f"row {planted[0]}: the CSV line has 16 fields"):
        read_transactions(dirty)
    # streamed in blocks (replay), the same rows with the same marks
    blocks = [b for b in raw_chunks(dirty, 7) if isinstance(b, pd.DataFrame)]
    assert all(len(b) <= 7 for b in blocks)
    streamed = pd.concat(blocks, ignore_index=True)
    assert np.flatnonzero(streamed["_malformed"].notna().to_numpy()).tolist() == planted
    with pytest.raises(ValueError, match="the CSV line has 16 fields"):
        list(iter_batches(dirty, 7))


def test_csv_lines_pandas_cannot_read_are_found_among_many(
    df: pd.DataFrame, tmp_path: Path
) -> None:
    """A bare carriage return inside an unquoted field passes the field count but pandas reads
    the line as two rows: each such line is a malformed row ("unreadable CSV line"), found by
    halving the block, and every other row reads as in the clean file."""
    clean = df.iloc[:300].reset_index(drop=True)
    good = tmp_path / "good.csv"
    write_transactions(clean, good)
    header, *body = good.read_bytes().splitlines(keepends=True)
    assert not any(b'"' in line for line in body)
    planted = [7, 150, 151, 299]
    out = [header]
    for k, line in enumerate(body):
        out.append(line)
        if k in planted:
            out.append(line.replace(b",", b"\rx,", 1))
    dirty = tmp_path / "dirty.csv"
    dirty.write_bytes(b"".join(out))
    back = read_transactions(dirty, lenient=True)
    rows = [k + 1 + i for i, k in enumerate(planted)]  # rows of the inserted lines (from 0)
    broken = back["_malformed"].notna().to_numpy()
    assert np.flatnonzero(broken).tolist() == rows
    assert back.loc[broken, "_malformed"].str.startswith("unreadable CSV line").all()
    kept, quarantine = load_transactions(dirty)
    pd.testing.assert_frame_equal(kept, clean, check_exact=True)
    assert quarantine.frame()["row"].tolist() == rows


_SOUND = [b'a,"b, c",d\n', b"x,y,z\n", b'"q ""w""",e,f\r\n', b'"multi\nline",g,h\n']
_BROKEN = [b'a,"open,c\n', b"a,b\n", b"a,b,c,d\n", b'a,"x"y,c\n', b'"a"",b,c\n', b"a,b\rc,d\n",
           b'a,"b\n"x,c\n']  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_SOUND + _BROKEN), min_size=1, max_size=12))
def test_a_quoted_block_is_judged_as_line_by_line(lines: list[bytes]) -> None:
    """One csv reader over a block with quotes finds the same bad rows, for the same reasons,
    as a reader per line (the reference)."""
    from replay.sources import _bad_widths, _fields, _wrong_width

    expected = {}
    for i, line in enumerate(lines):
        n = _fields(line)
        if n != 3:
            expected[i] = n if isinstance(n, str) else _wrong_width(n, 3)
    assert _bad_widths(lines, b"".join(lines), 3) == expected
