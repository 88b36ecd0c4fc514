"""Run transaction records through the scoring service in-process, in event-time order.

Records are encoded to JSON and decoded again by the same code the worker uses, so an in-process
run makes exactly the decisions a worker would.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pandas as pd
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from engine.protocols import FloatArray, IntArray
from engine.schemas import RawMessage
from engine.service import ScoringService

#: Columns a payment system would send; labels (is_fraud, fraud_pattern) never reach the engine.
TRANSACTION_FIELDS = (
    "event_id", "ts", "card_id", "customer_id", "merchant_id", "amount", "currency",
    "channel", "device_id", "ip", "country", "mcc",
)  # fmt: skip


def records_of(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Plain dicts with only the transaction fields (native Python types)."""
    cols = [c for c in TRANSACTION_FIELDS if c in df.columns]
    out: list[dict[str, Any]] = df[cols].to_dict("records")
    return out


def check_frame(df: pd.DataFrame) -> None:
    """ValueError naming the first row :func:`replay.quarantine.split_frame` rejects (reason,
    row, never the value): for callers that were handed a frame that must be clean."""
    from replay.quarantine import split_frame

    _, rejected = split_frame(df, duplicates=False)
    if len(rejected):
        top = rejected.iloc[0]
        msg = f"{top['reason']}: row {int(top['row'])} of the file: {top['detail']}"
        raise ValueError(msg)


def feature_inputs(
    df: pd.DataFrame, fields: Sequence[str]
) -> tuple[list[str], IntArray, FloatArray, dict[str, list[str]]]:
    """What :meth:`engine.pipeline.Pipeline.submit_features` takes, straight from columns
    (text as the worker passes it: '' when missing)."""
    n = len(df)
    ents = {}
    for f in fields:
        if f in df.columns:
            col = df[f]
            ents[f] = col.where(col.notna(), "").astype(str).tolist()
        else:
            ents[f] = [""] * n
    return (
        df["event_id"].astype(str).tolist(),
        df["ts"].to_numpy(np.int64),
        df["amount"].to_numpy(np.float64),
        ents,
    )


def encode(records: Sequence[dict[str, Any]], topic: str = "transactions") -> list[RawMessage]:
    dumps = orjson.dumps
    return [RawMessage(dumps(r, option=orjson.OPT_SERIALIZE_NUMPY), topic) for r in records]


def batches(df: pd.DataFrame, size: int) -> Iterator[pd.DataFrame]:
    for start in range(0, len(df), size):
        yield df.iloc[start : start + size]


@dataclass
class InprocessRun:
    """Everything an in-process run produced, row-aligned with the input."""

    event_ids: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)
    features: list[np.ndarray[Any, np.dtype[np.float64]]] = field(default_factory=list)
    feature_names: list[str] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    dead: int = 0

    def feature_matrix(self) -> np.ndarray[Any, np.dtype[np.float64]]:
        if not self.features:
            return np.zeros((0, len(self.feature_names)))
        return np.vstack(self.features)


def run_inprocess(
    service: ScoringService,
    df: pd.DataFrame,
    batch_size: int = 1000,
    label: str = "replay",
    progress: bool = True,
) -> InprocessRun:
    """Score ``df`` (sorted by ts) batch by batch; keep features, scores and stage timings."""
    run = InprocessRun(feature_names=list(service.pipeline.feature_names))
    with Progress(
        TextColumn(f"[bold]{label}"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,}"),
        TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), disable=not progress,
        transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task(label, total=len(df), rate="")
        done = 0
        spent = 0.0
        for chunk in batches(df, batch_size):
            report = service.process_transactions(encode(records_of(chunk)))
            run.dead += report.dead
            for stage, secs in report.stage_seconds.items():
                run.stage_seconds[stage] = run.stage_seconds.get(stage, 0.0) + secs
            spent += sum(report.stage_seconds.values())
            if report.scored is not None:
                for d in report.scored.decisions:
                    run.event_ids.append(d.event_id)
                    run.scores.append(d.score)
                    run.decisions.append(d.decision)
                run.features.append(report.scored.features)
            done += len(chunk)
            bar.update(task, advance=len(chunk), rate=f"{done / max(spent, 1e-9):,.0f} ev/s")
    return run
