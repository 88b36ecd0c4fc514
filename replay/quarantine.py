"""Bad rows of a file are quarantined, not fatal: ``DIR/rejected.parquet`` and a count.

Every file command (``replay``, ``train``, ``backtest``, ``rules backtest``) reads a transactions
file through :func:`load_transactions` (or, for ``replay``, the engine's own decoder), which
splits it column-wise into the rows the engine accepts and the rejected ones, each with its row
number in the file (0-based, header excluded) and the dead-letter reason the live decoder would
give (:mod:`engine.schemas`). The rejected rows are written without their values (a value may be
a card number): ``row``, ``reason``, ``detail``. ``strict=True`` stops at the first bad row
instead (:class:`BadRowError`, naming the row and the reason).

>>> good, bad = split_frame(pd.DataFrame({"event_id": ["a", "b"], "ts": [1767225600000, 5],
...     "card_id": ["c", "c"], "merchant_id": ["m", "m"], "amount": [0.0, 1.0]}))
>>> list(good["event_id"]), bad[["row", "reason"]].to_dict("records")
(['a'], [{'row': 1, 'reason': 'invalid_timestamp'}])
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.cardnumbers import contains_pan
from engine.schemas import (
    CARD_NUMBER,
    DUPLICATE,
    INVALID_AMOUNT,
    INVALID_TIMESTAMP,
    LABEL,
    MALFORMED_ROW,
    MAX_TS_MS,
    MIN_TS_MS,
    MISSING_FIELD,
    REFUND,
    REFUND_TYPES,
    TRANSACTION,
    WRONG_TYPE,
)
from replay.sources import MALFORMED, MALFORMED_RAW, read_transactions

REJECTED_FILE = "rejected.parquet"
#: the rejected rows of a ``--labels`` file (train, backtest, rules backtest)
REJECTED_LABELS_FILE = "rejected-labels.parquet"
REJECTED_COLUMNS = ("row", "reason", "detail")


class BadRowError(ValueError):
    """``--strict``: the first bad row of a file (its number and reason, never its value)."""


def _empty() -> pd.DataFrame:
    return pd.DataFrame({"row": pd.Series([], dtype=np.int64), "reason": pd.Series([], dtype=str),
                         "detail": pd.Series([], dtype=str)})  # fmt: skip


class _Verdicts:
    """The first failing check of each row of a frame: its reason and detail ("" = accepted)."""

    def __init__(self, df: pd.DataFrame) -> None:
        n = len(df)
        self.reason = np.full(n, "", dtype=object)
        self.detail = np.full(n, "", dtype=object)
        self.malformed = MALFORMED in df.columns
        if self.malformed:  # a CSV line that did not split into the header's fields
            broken = df[MALFORMED].notna().to_numpy()
            self.reason[broken] = MALFORMED_ROW
            self.detail[broken] = df[MALFORMED].to_numpy()[broken]
            df = df.drop(columns=[c for c in (MALFORMED, MALFORMED_RAW) if c in df.columns])
        self.df = df

    def mark(self, bad: np.ndarray[Any, Any], why: str, what: str) -> None:
        fresh = bad & (self.reason == "")
        self.reason[fresh] = why
        self.detail[fresh] = what

    def common(self, required_str: tuple[str, ...], ts_required: bool = True) -> None:
        """Card numbers (the decoder looks for them first), required text, a readable ``ts``
        (``ts_required=False``: only where the file has the column)."""
        df, n = self.df, len(self.df)
        for name in [c for c in df.columns if df[c].dtype == object
                     or pd.api.types.is_string_dtype(df[c])]:  # fmt: skip
            values = pd.unique(df[name].dropna())  # few distinct cards/merchants: cheap
            pans = [v for v in values.tolist() if isinstance(v, str) and contains_pan(v)]
            if pans:
                self.mark(df[name].isin(pans).to_numpy(), CARD_NUMBER,
                          f"{name}: looks like a card number")  # fmt: skip
        for name in required_str:
            if name not in df.columns:
                self.mark(np.ones(n, dtype=bool), MISSING_FIELD, f"the file has no column {name!r}")
                continue
            col = df[name]
            self.mark(col.isna().to_numpy(), MISSING_FIELD, f"{name}: required")
            self.mark((col.astype(str) == "").to_numpy(), WRONG_TYPE,
                      f"{name}: expected a non-empty string")  # fmt: skip
        if "ts" not in df.columns:
            if ts_required:
                self.mark(np.ones(n, dtype=bool), MISSING_FIELD, "the file has no column 'ts'")
        else:
            ts = pd.to_numeric(df["ts"], errors="coerce").to_numpy(np.float64)
            self.mark(~((ts >= MIN_TS_MS) & (ts < MAX_TS_MS)), INVALID_TIMESTAMP,
                      "ts: missing, unreadable or out of range 2000..2090")  # fmt: skip

    def split(self, first_row: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        bad = self.reason != ""
        rejected = pd.DataFrame({
            "row": np.flatnonzero(bad).astype(np.int64) + first_row,
            "reason": self.reason[bad].astype(str), "detail": self.detail[bad].astype(str),
        }) if bad.any() else _empty()  # fmt: skip
        good = self.df.loc[~bad] if bad.any() else self.df
        if self.malformed and "is_fraud" in good.columns and not good["is_fraud"].isna().any():
            good = good.astype({"is_fraud": bool})  # the malformed rows' gaps made it nullable
        return good, rejected


def split_frame(
    df: pd.DataFrame, first_row: int = 0, duplicates: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(accepted rows, rejected ``row``/``reason``/``detail``): the decoder's checks over whole
    columns, first failing check per row (the order of :func:`engine.schemas.validate`).

    ``df`` has canonical dtypes (:func:`replay.sources.normalise`; unreadable ``ts``/``amount``
    as missing). A missing required column rejects every row. ``duplicates``: a repeated
    ``event_id`` (after its first row) is rejected as ``duplicate_event_id``.
    """
    v = _Verdicts(df)
    v.common(TRANSACTION.required_str)
    df, n = v.df, len(v.df)
    if "amount" not in df.columns:
        v.mark(np.ones(n, dtype=bool), MISSING_FIELD, "the file has no column 'amount'")
    else:
        amount = pd.to_numeric(df["amount"], errors="coerce").to_numpy(np.float64)
        v.mark(~np.isfinite(amount), INVALID_AMOUNT, "amount: missing or not a finite number")
        refund = amount < 0
        if "type" in df.columns:
            kind = df["type"].astype(str).str.lower().isin(REFUND_TYPES).to_numpy()
            refund |= kind & df["type"].notna().to_numpy()
        v.mark(refund, REFUND, "refunds/reversals (negative amount or type) are not scored")
    if duplicates and "event_id" in df.columns:
        dup = df["event_id"].duplicated(keep="first").to_numpy() & (v.reason == "")
        v.mark(dup, DUPLICATE, "event_id: seen earlier in the file")
    return v.split(first_row)


def split_labels(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`split_frame` for a labels file that has the columns :func:`load_labels` asks for:
    ``event_id``, a readable ``ts`` where there is one, and an ``is_fraud`` of true/false/1/0
    (a repeated ``event_id`` is not a bad row: the latest label is the truth, as a later
    chargeback overrides an analyst)."""
    v = _Verdicts(df)
    v.common(LABEL.required_str, ts_required=False)
    v.mark(v.df["is_fraud"].isna().to_numpy(), WRONG_TYPE,
           "is_fraud: missing or not one of true/false/1/0")  # fmt: skip
    return v.split(0)


@dataclass
class Quarantine:
    """The rejected rows of one command's input file(s), written to ``DIR/rejected.parquet``."""

    parts: list[pd.DataFrame] = field(default_factory=list)

    def add(self, rejected: pd.DataFrame) -> None:
        if len(rejected):
            self.parts.append(rejected.loc[:, list(REJECTED_COLUMNS)])

    @property
    def count(self) -> int:
        return sum(len(p) for p in self.parts)

    def by_reason(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for p in self.parts:
            out.update(p["reason"].value_counts().to_dict())
        return dict(sorted(out.items()))

    def frame(self) -> pd.DataFrame:
        if not self.parts:
            return _empty()
        return pd.concat(self.parts, ignore_index=True).sort_values("row", kind="stable")

    def write(self, out_dir: Path, name: str = REJECTED_FILE) -> Path:
        """``out_dir/rejected.parquet`` (written even when empty: no file means no run)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / name
        self.frame().to_parquet(path, index=False)
        return path

    def summary(self) -> str:
        """``"3 rows quarantined (invalid_amount=2, missing_field=1)"`` or ``""``."""
        if not self.count:
            return ""
        return f"{self.count:,} rows quarantined ({reasons_text(self.by_reason())})"


def reasons_text(by_reason: Mapping[str, int]) -> str:
    """``"invalid_amount=2, missing_field=1"``: counts by reason, reasons sorted."""
    return ", ".join(f"{k}={v:,}" for k, v in sorted(by_reason.items()))


def quarantined_line(by_reason: Mapping[str, int], what: str, where: Path) -> str:
    """What a file command says of its rejected rows: ``"quarantined 3 rows (...): DIR/..."``."""
    return f"quarantined {sum(by_reason.values()):,} {what} ({reasons_text(by_reason)}): {where}"


def first_bad(rejected: pd.DataFrame, what: str) -> BadRowError:
    top = rejected.sort_values("row", kind="stable").iloc[0]
    return BadRowError(f"{what}: row {int(top['row'])}: {top['reason']}: {top['detail']} "
                       "(--strict stops at the first bad row)")  # fmt: skip


def load_transactions(
    path: Path, strict: bool = False, duplicates: bool = True
) -> tuple[pd.DataFrame, Quarantine]:
    """The file's accepted rows (canonical dtypes, file order, fresh index) and its quarantine.

    Raises :class:`BadRowError` on the first bad row when ``strict``; a file that cannot be
    read at all (wrong suffix, not Parquet, a ``ts`` column of booleans) still raises
    ``ValueError``: that is not a bad row, it is a bad file.
    """
    df = read_transactions(path, lenient=True)
    good, rejected = split_frame(df, duplicates=duplicates)
    if strict and len(rejected):
        raise first_bad(rejected, str(path))
    quarantine = Quarantine()
    quarantine.add(rejected)
    return _with_columns(good.reset_index(drop=True)), quarantine


#: The columns every accepted transaction has, with their dtypes (a frame with no accepted row
#: may lack them: an empty file, or one whose every row was rejected for a missing column).
_REQUIRED = {"event_id": str, "ts": np.int64, "card_id": str, "merchant_id": str,
             "amount": np.float64}  # fmt: skip


def _with_columns(good: pd.DataFrame) -> pd.DataFrame:
    if len(good):  # an accepted row has every required column
        return good
    for name, dtype in _REQUIRED.items():
        if name not in good.columns:
            good[name] = pd.Series([], dtype=dtype)
    return good


def load_labels(
    path: Path, strict: bool = False, ts_required: bool = True
) -> tuple[pd.DataFrame, Quarantine]:
    """A labels file's accepted rows (``event_id``, ``ts``, ``is_fraud`` and ``source`` if
    present, file order) and its quarantine (``strict``: :class:`BadRowError` at the first).
    ``ts_required=False``: a file without ``ts`` is accepted (labels known at the end)."""
    frame = read_transactions(path, lenient=True)
    need = [c for c in ("event_id", "ts", "is_fraud")
            if c not in frame.columns and (c != "ts" or ts_required)]  # fmt: skip
    if need:  # not a bad row: a file that is not a labels file
        msg = f"{path}: missing column(s) {', '.join(need)}"
        raise ValueError(msg)
    good, rejected = split_labels(frame)
    if strict and len(rejected):
        raise first_bad(rejected, str(path))
    quarantine = Quarantine()
    quarantine.add(rejected)
    cols = [c for c in ("event_id", "ts", "is_fraud", "source") if c in good.columns]
    return good.loc[:, cols].astype({"is_fraud": bool}).reset_index(drop=True), quarantine


def final_truth(labels: pd.DataFrame, event_ids: pd.Series) -> pd.Series:
    """Each event's final label: the last of its labels in ``labels`` (in time order: a later
    chargeback overrides an analyst; file order without a ``ts`` column), False for an event
    without one."""
    ordered = labels.sort_values("ts", kind="stable") if "ts" in labels.columns else labels
    last = ordered.drop_duplicates("event_id", keep="last").set_index("event_id")["is_fraud"]
    return event_ids.map(last).fillna(False).astype(bool)
