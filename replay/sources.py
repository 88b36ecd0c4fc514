"""Transaction files: Parquet, CSV and JSON lines, chosen by the file name's suffix.

``.parquet`` / ``.pq``; ``.csv`` (optionally ``.csv.gz``); ``.jsonl`` / ``.ndjson`` / ``.json``
(JSON lines: one object per line, encoded with orjson; optionally ``.gz``).

Reading restores the same dtypes whatever the format, so that a frame written and read back is
identical: identifiers and other text columns as pandas' string dtype, ``ts`` as int64 epoch
milliseconds (ISO-8601 text with a zone is converted), ``amount`` float64, ``is_fraud`` bool.
Columns the engine does not know are kept as they are. One limitation of CSV: a missing text value
and an empty one are the same there, both read back as ``""``.
"""

from __future__ import annotations

import gzip
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


def _csv_header(path: Path) -> list[str]:
    return [str(c) for c in pd.read_csv(path, nrows=0).columns]


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


def read_transactions(path: PathLike, lenient: bool = False) -> pd.DataFrame:
    """The whole file as a frame with canonical dtypes (see :func:`normalise`; ``lenient``:
    unreadable values and JSON lines are kept as rows for :mod:`replay.quarantine`)."""
    p = Path(path)
    fmt = file_format(p)
    if fmt == "parquet":
        return normalise(pq.read_table(p).to_pandas(), lenient)
    if fmt == "csv":
        return normalise(pd.read_csv(p, **_csv_options(_csv_header(p))), lenient)
    with open_in(p) as f:
        return _json_frame(f.read().splitlines(), lenient)


def raw_chunks(path: PathLike, batch_size: int) -> Iterator[pd.DataFrame | list[bytes]]:
    """The file in chunks of at most ``batch_size`` rows, in file order, without loading it
    whole: frames as read (Parquet; CSV with text columns kept text, index from 0), or the
    non-empty lines of JSON lines (left undecoded: callers decide what a bad line means)."""
    p = Path(path)
    fmt = file_format(p)
    if fmt == "parquet":
        pf = pq.ParquetFile(p)
        try:
            for batch in pf.iter_batches(batch_size=batch_size):
                yield batch.to_pandas()
        finally:
            pf.close()
    elif fmt == "csv":
        with pd.read_csv(p, chunksize=batch_size, **_csv_options(_csv_header(p))) as reader:
            for chunk in reader:
                yield chunk.reset_index(drop=True)
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
    for chunk in raw_chunks(path, batch_size):
        yield normalise(chunk) if isinstance(chunk, pd.DataFrame) else _json_frame(chunk)
