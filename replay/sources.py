"""Transaction files: Parquet, CSV and JSON lines, chosen by the file name's suffix.

``.parquet`` / ``.pq``; ``.csv`` (optionally ``.csv.gz``); ``.jsonl`` / ``.ndjson`` / ``.json``
(JSON lines: one object per line, encoded with orjson; optionally ``.gz``).

Reading restores the same dtypes whatever the format, so that a frame written and read back is
identical: identifiers and other text columns as pandas' string dtype, ``ts`` as int64 epoch
milliseconds (ISO-8601 text with a zone is converted), ``amount`` float64, ``is_fraud`` bool.
Columns the engine does not know are kept as they are. One limitation of CSV: a missing text value
and an empty one are the same there, both read back as ``""``.

A CSV row is one record (blank lines between rows are skipped and not counted, as pandas does; a
quoted field may span lines). A row that does not split into the header's fields (too many or
too few, a quote that never closes) is not fatal: it becomes a row with only :data:`MALFORMED`
(why) and :data:`MALFORMED_RAW` (the line) set, for :mod:`replay.quarantine` and ``replay`` to
reject that row alone.
"""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

#: Text columns of transaction files (those present are read as strings).
STR_COLUMNS = (
    "event_id", "card_id", "customer_id", "merchant_id", "currency", "channel", "device_id",
    "ip", "country", "mcc", "fraud_pattern", "type", "source",
)  # fmt: skip
_STR = pd.Series(["x"]).dtype  # pandas' default string dtype ("str" on pandas >= 3)
_OBJECT_STR = _STR.kind == "O" and not isinstance(_STR, pd.StringDtype)
_PARQUET_ROW_GROUP = 64 * 1024
_JSON_CHUNK = 100_000
#: Columns of a CSV row that could not be read: the reason, and the line as it was (bytes).
MALFORMED = "_malformed"
MALFORMED_RAW = "_malformed_raw"
_CSV_BLOCK = 50_000  # rows per pandas call

PathLike = str | Path


def file_format(path: PathLike) -> str:
    """``"parquet"``, ``"csv"`` or ``"jsonl"`` from the suffix of ``path``."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
        if suffixes and suffixes[-1] in (".parquet", ".pq"):
            suffixes = []
    last = suffixes[-1] if suffixes else ""
    if last in (".parquet", ".pq"):
        return "parquet"
    if last == ".csv":
        return "csv"
    if last in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    msg = f"{path}: unknown transaction file type (use .parquet, .csv, .jsonl or .json)"
    raise ValueError(msg)


def _to_str(s: pd.Series) -> pd.Series:
    if s.dtype == _STR and not _OBJECT_STR:
        return s
    if _OBJECT_STR:  # pandas 2 without the string dtype: keep missing values missing
        return s.map(lambda v: v if v is None or isinstance(v, str) or v != v else str(v))
    return s.astype(_STR)


#: ``ts`` of a row whose time cannot be read, in a lenient read (out of range: quarantined).
UNREADABLE_TS = -1


def _lenient_epoch_ms(s: pd.Series) -> pd.Series:
    """Like :func:`_to_epoch_ms`, value by value: what cannot be read becomes ``UNREADABLE_TS``."""
    if pd.api.types.is_datetime64_any_dtype(s):
        return _to_epoch_ms(s.fillna(pd.Timestamp(0)))
    num = pd.to_numeric(s, errors="coerce") if not pd.api.types.is_bool_dtype(s) else s * np.nan
    out = num.where(np.isfinite(num.astype(np.float64)) & (num.abs() < 2**62), np.nan)
    rest = out.isna() & s.notna()
    if rest.any():
        dt = pd.to_datetime(s[rest].astype(str), utc=True, format="ISO8601", errors="coerce")
        ms = (dt - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)
        out = out.astype(np.float64)
        out[rest] = ms.astype(np.float64)
    return out.fillna(UNREADABLE_TS).astype(np.int64)


def _to_epoch_ms(s: pd.Series) -> pd.Series:
    if pd.api.types.is_bool_dtype(s):
        msg = "ts: booleans are not timestamps"
        raise ValueError(msg)
    if pd.api.types.is_integer_dtype(s):
        return s.astype(np.int64)
    if pd.api.types.is_float_dtype(s):
        if s.isna().any():
            msg = "ts: missing values"
            raise ValueError(msg)
        return s.astype(np.int64)
    if pd.api.types.is_datetime64_any_dtype(s):
        dt = s if s.dt.tz is not None else s.dt.tz_localize("UTC")
    else:
        text = s.astype(_STR)
        if text.str.fullmatch(r"-?[0-9]+").all():
            return text.astype(np.int64)
        dt = pd.to_datetime(text, utc=True, format="ISO8601")
    epoch = pd.Timestamp(0, tz="UTC")
    return ((dt - epoch) // pd.Timedelta(milliseconds=1)).astype(np.int64)


def _to_bool(s: pd.Series) -> pd.Series:
    if pd.api.types.is_bool_dtype(s) and not s.isna().any():
        return s.astype(bool)
    if not pd.api.types.is_bool_dtype(s) and not pd.api.types.is_numeric_dtype(s):
        lowered = s.astype(_STR).str.lower()
        mapped = lowered.map({"true": True, "false": False, "1": True, "0": False})
        s = mapped.where(~s.isna(), None)
    return s.astype(bool) if not s.isna().any() else s.astype("boolean")


def normalise(df: pd.DataFrame, lenient: bool = False) -> pd.DataFrame:
    """``df`` with the canonical dtypes of the known columns (in place, also returned).

    ``lenient``: a ``ts`` or ``amount`` that cannot be read does not raise; it becomes
    ``UNREADABLE_TS`` / NaN, for :mod:`replay.quarantine` to reject that row alone.
    """
    for name in STR_COLUMNS:
        if name in df.columns:
            df[name] = _to_str(df[name])
    if "ts" in df.columns:
        df["ts"] = _lenient_epoch_ms(df["ts"]) if lenient else _to_epoch_ms(df["ts"])
    if "amount" in df.columns:
        errors = "coerce" if lenient else "raise"
        df["amount"] = pd.to_numeric(df["amount"], errors=errors).astype(np.float64)
    if "is_fraud" in df.columns:
        df["is_fraud"] = _to_bool(df["is_fraud"])
    return df


# ----------------------------------------------------------------------------------------- write


def _default(value: Any) -> Any:
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    if value is pd.NA or value is pd.NaT:
        return None
    msg = f"not JSON serialisable: {type(value).__name__}"
    raise TypeError(msg)


def _open_out(path: Path) -> IO[bytes]:
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "wb", compresslevel=5)  # type: ignore[return-value]
    return path.open("wb")


def write_transactions(df: pd.DataFrame, path: PathLike) -> None:
    """Write ``df`` (no index) in the format given by the suffix of ``path``."""
    p = Path(path)
    fmt = file_format(p)
    p.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        table = pa.Table.from_pandas(df, preserve_index=False)
        pq.write_table(table, p, row_group_size=_PARQUET_ROW_GROUP)
    elif fmt == "csv":
        # CRLF (RFC 4180) so that a lone CR or LF inside a text value gets quoted
        df.to_csv(p, index=False, lineterminator="\r\n")
    else:
        names = [str(c) for c in df.columns]
        dumps = orjson.dumps
        option = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE
        with _open_out(p) as out:
            for start in range(0, len(df), _JSON_CHUNK):
                chunk = df.iloc[start : start + _JSON_CHUNK]
                cols = [chunk[c].tolist() for c in chunk.columns]
                # orjson writes NaN (missing) as null
                out.write(
                    b"".join(
                        dumps(dict(zip(names, row, strict=True)), option=option, default=_default)
                        for row in zip(*cols, strict=True)
                    )
                )


# ------------------------------------------------------------------------------------------ read


def _csv_options(columns: list[str]) -> dict[str, Any]:
    """Text columns stay text ("" stays ""); only numeric columns treat "" as missing."""
    text = [c for c in columns if c in STR_COLUMNS]
    return {
        "dtype": dict.fromkeys(text, str),
        "keep_default_na": False,
        "float_precision": "round_trip",
        "na_values": {c: [""] for c in columns if c not in text},
    }


def _header_names(head: bytes) -> list[str]:
    """The column names of a CSV header line, read as pandas reads them ([] for no header)."""
    if not head.strip():  # an empty file: no columns, no rows
        return []
    return [str(c) for c in pd.read_csv(io.BytesIO(head), nrows=0).columns]


def _fields(line: bytes) -> int | str:
    """The number of fields of one CSV row, or why it cannot be split."""
    if b'"' not in line:
        return line.count(b",") + 1
    try:
        rows = list(csv.reader([line.decode("utf-8", "replace").rstrip("\r\n")], strict=True))
    except csv.Error as exc:
        return f"unreadable CSV line ({exc})"
    return len(rows[0]) if len(rows) == 1 else "a row that is not one CSV record"


def _one_record_each(lines: list[bytes], width: int) -> bool:
    """Whether one ``csv`` reader over the block reads each line as one record of ``width``
    fields: what the line-by-line check below finds for every line of a sound block, at one
    reader's cost (a reader per line took ~3 µs a row)."""
    reader = csv.reader([line.decode("utf-8", "replace").rstrip("\r\n") for line in lines],
                        strict=True)  # fmt: skip
    try:
        for k, row in enumerate(reader, 1):
            if reader.line_num != k or len(row) != width:
                return False
    except csv.Error:
        return False
    return reader.line_num == len(lines)


def _bad_widths(lines: list[bytes], joined: bytes, width: int) -> dict[int, str]:
    """Rows that do not have ``width`` fields (why, by row); without quotes in the block the
    commas are counted over the whole block at once, with quotes one reader reads a sound
    block and only a block that is not is read line by line."""
    if b'"' in joined:
        if _one_record_each(lines, width):
            return {}
        out: dict[int, str] = {}
        for i, line in enumerate(lines):
            n = _fields(line)
            if n != width:
                out[i] = n if isinstance(n, str) else _wrong_width(n, width)
        return out
    buf = np.frombuffer(joined, dtype=np.uint8)
    ends = np.cumsum(np.fromiter(map(len, lines), dtype=np.int64, count=len(lines)))
    counts = np.diff(np.searchsorted(np.flatnonzero(buf == ord(",")), ends), prepend=0) + 1
    return {int(i): _wrong_width(int(counts[i]), width) for i in np.flatnonzero(counts != width)}


def _wrong_width(n: int, width: int) -> str:
    return f"the CSV line has {n} fields, the header {width}"


def _is_utf8(line: bytes) -> bool:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _parse_csv(head: bytes, body: bytes, rows: int, names: list[str]) -> pd.DataFrame:
    """``body`` (``rows`` rows, each ending in a newline) under ``head``, as pandas reads it."""
    frame = pd.read_csv(io.BytesIO(head + body), **_csv_options(names))
    if len(frame) != rows:
        msg = f"{rows} lines read as {len(frame)} rows"
        raise ValueError(msg)
    return frame


def _mark_unreadable(
    head: bytes, lines: list[bytes], idx: list[int], names: list[str], why: dict[int, str],
    exc: Exception,
) -> None:  # fmt: skip
    """``lines[idx]`` failed to parse together (``exc``): split them in halves until the lines
    that fail are alone, and say why in ``why``. A block with one such line costs about
    2·log2(n) parses, not one per line (~1 ms each)."""
    if len(idx) == 1:
        why[idx[0]] = f"unreadable CSV line ({str(exc).splitlines()[0][:80]})"
        return
    mid = len(idx) // 2
    for half in (idx[:mid], idx[mid:]):
        try:
            _parse_csv(head, b"".join([lines[i] for i in half]), len(half), names)
        except (ValueError, pd.errors.ParserError) as failed:
            _mark_unreadable(head, lines, half, names, why, failed)


def _csv_block(head: bytes, lines: list[bytes], names: list[str]) -> pd.DataFrame:
    """``lines`` (each one row, ending in a newline) read like the whole file would be; a row
    that does not split into the header's fields has only the two malformed columns."""
    why: dict[int, str] = {}
    joined = b"".join(lines)
    if not _is_utf8(joined):
        why = {i: "not UTF-8 text" for i, line in enumerate(lines) if not _is_utf8(line)}
    for i, reason in _bad_widths(lines, joined, len(names)).items():
        why.setdefault(int(i), reason)
    good = [i for i in range(len(lines)) if i not in why] if why else list(range(len(lines)))
    try:  # the usual block has no bad row: its lines are joined once
        body = b"".join([lines[i] for i in good]) if why else joined
        frame = _parse_csv(head, body, len(good), names)
    except (ValueError, pd.errors.ParserError) as exc:  # pandas saw what the checks did not
        _mark_unreadable(head, lines, good, names, why, exc)
        good = [i for i in range(len(lines)) if i not in why]
        frame = _parse_csv(head, b"".join([lines[i] for i in good]), len(good), names)
    if not why:
        return frame
    frame = frame.set_axis(good).reindex(range(len(lines)))
    bad = sorted(why)
    frame[MALFORMED] = pd.Series([why[i] for i in bad], index=bad, dtype=object)
    frame[MALFORMED_RAW] = pd.Series([lines[i].rstrip(b"\r\n") for i in bad], index=bad,
                                     dtype=object)  # fmt: skip
    return frame


#: A quoted field may span lines; a row still open after this many lines is an unclosed quote.
_MAX_ROW_LINES = 64
_READ_HINT = 1 << 20  # bytes of lines read at a time


def _csv_rows(f: IO[bytes], width: int) -> Iterator[list[bytes]]:
    """The rows of a CSV body, a list at a time, each ending in a newline; blank lines between
    rows skipped. Lines are joined while a quoted field spans them (an odd number of quotes so
    far); when the joined lines do not make one record of ``width`` fields (a quote that never
    closes, or closes on a stray quote lines later), the first line is given alone (malformed)
    and the others are read again as rows. Lines without quotes go through a list at a time."""
    ahead: deque[bytes] = deque()

    def read() -> list[bytes]:
        group = f.readlines(_READ_HINT)
        if group and not group[-1].endswith(b"\n"):  # the file's last line
            group[-1] += b"\n"
        return group

    def pull() -> bytes | None:
        if not ahead:
            ahead.extend(read())
        return ahead.popleft() if ahead else None

    while True:
        if not ahead:
            group = read()
            if not group:
                return
            if not any(line.count(b'"') % 2 for line in group):  # no field spans lines
                yield [line for line in group if line.strip()]
                continue
            ahead.extend(group)
        line = pull()
        if line is None:
            return
        if not line.strip():
            continue
        if line.count(b'"') % 2 == 0:
            yield [line]
            continue
        taken = [line]
        row = line
        while row.count(b'"') % 2 and len(taken) < _MAX_ROW_LINES:
            more = pull()
            if more is None:
                break
            taken.append(more)
            row += more
        if row.count(b'"') % 2 == 0 and _fields(row) == width:
            yield [row]
        else:  # not one record: the first line alone, the others read again
            yield [line]
            ahead.extendleft(reversed(taken[1:]))


def _csv_blocks(path: Path, rows: int) -> Iterator[pd.DataFrame]:
    """The CSV file in frames of at most ``rows`` rows (index from 0), malformed rows kept."""
    with open_in(path) as f:
        head = f.readline()
        if not head.endswith(b"\n"):
            head += b"\n"
        names = _header_names(head)
        block: list[bytes] = []
        parse = max(rows, _CSV_BLOCK)  # pandas is called on big blocks: it costs ~1 ms a call
        for got in _csv_rows(f, len(names)):
            block.extend(got)
            if len(block) >= parse:
                yield from _slices(_csv_block(head, block[:parse], names), rows)
                del block[:parse]
        if block:
            yield from _slices(_csv_block(head, block, names), rows)


def _slices(frame: pd.DataFrame, rows: int) -> Iterator[pd.DataFrame]:
    if len(frame) <= rows:
        yield frame
        return
    for lo in range(0, len(frame), rows):
        yield frame.iloc[lo : lo + rows].reset_index(drop=True)


def _read_csv(path: Path, lenient: bool) -> pd.DataFrame:
    frames = list(_csv_blocks(path, _CSV_BLOCK))
    if not frames:  # no rows: the header's columns, if there is one
        with open_in(path) as f:
            names = _header_names(f.readline())
        return pd.DataFrame({n: pd.Series(dtype=object) for n in names})
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if not lenient:
        _refuse_malformed(frame, path, 0)
    return frame


def _refuse_malformed(frame: pd.DataFrame, path: PathLike, first_row: int) -> None:
    """ValueError naming the first malformed row of ``frame`` (its rows start at
    ``first_row``), for the readers that do not quarantine."""
    if MALFORMED not in frame.columns:
        return
    row = int(np.flatnonzero(frame[MALFORMED].notna().to_numpy())[0])
    msg = f"{path}: row {first_row + row}: {frame[MALFORMED].iloc[row]}"
    raise ValueError(msg)


def _json_frame(lines: list[bytes], lenient: bool = False) -> pd.DataFrame:
    rows = [line for line in lines if line.strip()]
    if lenient:  # a line that is not a JSON object becomes a row without fields (rejected)
        records = [_json_object(line) for line in rows]
    else:
        records = orjson.loads(b"[" + b",".join(rows) + b"]") if rows else []
    frame = pd.DataFrame.from_records(records) if records else pd.DataFrame()
    if lenient and len(frame) < len(records):  # only empty objects: keep one row each
        frame = pd.DataFrame(index=range(len(records)))
    return normalise(frame, lenient)


def _json_object(line: bytes) -> dict[str, Any]:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return {}
    return obj if isinstance(obj, dict) else {}


def open_in(path: Path) -> IO[bytes]:
    """The file's bytes, gunzipped when it ends in .gz."""
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


class UnreadableFileError(ValueError):
    """A file that is not what its name says (not Parquet, a CSV header that is not UTF-8, a
    broken gzip stream): not a bad row, a bad file; one line for the CLI."""


#: What the readers raise on a file that is not what its name says.
_UNREADABLE = (pa.ArrowException, UnicodeDecodeError, pd.errors.ParserError, gzip.BadGzipFile,
               EOFError, zlib.error)  # fmt: skip


def _unreadable(path: Path, fmt: str, exc: BaseException) -> UnreadableFileError:
    text = str(exc).strip()
    first = text.splitlines()[0][:200] if text else type(exc).__name__
    return UnreadableFileError(f"{path}: not a readable {fmt} file ({first})")


def read_transactions(path: PathLike, lenient: bool = False) -> pd.DataFrame:
    """The whole file as a frame with canonical dtypes (see :func:`normalise`; ``lenient``:
    unreadable values and JSON lines are kept as rows for :mod:`replay.quarantine`).
    :class:`UnreadableFileError` if the file is not what its name says."""
    p = Path(path)
    fmt = file_format(p)
    try:
        if fmt == "parquet":
            return normalise(pq.read_table(p).to_pandas(), lenient)
        if fmt == "csv":
            return normalise(_read_csv(p, lenient), lenient)
        with open_in(p) as f:
            return _json_frame(f.read().splitlines(), lenient)
    except _UNREADABLE as exc:
        raise _unreadable(p, fmt, exc) from None


def raw_chunks(path: PathLike, batch_size: int) -> Iterator[pd.DataFrame | list[bytes]]:
    """The file in chunks of at most ``batch_size`` rows, in file order, without loading it
    whole: frames as read (Parquet; CSV with text columns kept text, index from 0), or the
    non-empty lines of JSON lines (left undecoded: callers decide what a bad line means).
    :class:`UnreadableFileError` if the file is not what its name says."""
    p = Path(path)
    fmt = file_format(p)
    try:
        yield from _raw_chunks(p, fmt, batch_size)
    except _UNREADABLE as exc:
        raise _unreadable(p, fmt, exc) from None


def _raw_chunks(p: Path, fmt: str, batch_size: int) -> Iterator[pd.DataFrame | list[bytes]]:
    if fmt == "parquet":
        pf = pq.ParquetFile(p)
        try:
            for batch in pf.iter_batches(batch_size=batch_size):
                yield batch.to_pandas()
        finally:
            pf.close()
    elif fmt == "csv":
        yield from _csv_blocks(p, batch_size)
    else:
        with open_in(p) as f:
            lines: list[bytes] = []
            for line in f:
                if not line.strip():
                    continue
                lines.append(line)
                if len(lines) >= batch_size:
                    yield lines
                    lines = []
            if lines:
                yield lines


def iter_batches(path: PathLike, batch_size: int = 100_000) -> Iterator[pd.DataFrame]:
    """Frames of at most ``batch_size`` rows, in file order, without loading the whole file.

    Each batch has canonical dtypes and its own index starting at 0.
    """
    if batch_size < 1:
        msg = "batch_size must be >= 1"
        raise ValueError(msg)
    seen = 0
    for chunk in raw_chunks(path, batch_size):
        if isinstance(chunk, pd.DataFrame):
            _refuse_malformed(chunk, path, seen)
        seen += len(chunk)
        yield normalise(chunk) if isinstance(chunk, pd.DataFrame) else _json_frame(chunk)
