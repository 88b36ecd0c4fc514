"""Event-time merge of transactions, events and labels: order, determinism, resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest

from replay.merge import (
    EVENT,
    LABEL,
    TRANSACTION,
    Batch,
    Merger,
    count_rows,
    parse_duration,
    parse_time,
)
from replay.sources import write_transactions

T0 = 1_767_225_600_000
H = 3_600_000


def txns(n: int, step: int = 60_000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ts = T0 + np.cumsum(rng.integers(0, step, n))
    return pd.DataFrame({
        "event_id": [f"e{i:05d}" for i in range(n)],
        "ts": ts.astype(np.int64),
        "card_id": [f"c{i % 7}" for i in range(n)],
        "merchant_id": [f"m{i % 3}" for i in range(n)],
        "amount": rng.uniform(1, 100, n).round(2),
        "is_fraud": rng.random(n) < 0.2,
        "fraud_pattern": "",
    })  # fmt: skip


def flat(batches: list[Batch]) -> list[tuple[str, int, Any]]:
    out = []
    for b in batches:
        for rec, t in zip(b.records, b.ts.tolist(), strict=True):
            key = rec.get("event_id") if isinstance(rec, dict) else rec
            out.append((b.kind, t, key))
    return out


def test_parse_duration_and_time() -> None:
    assert parse_duration("7d") == 7 * 24 * H
    assert parse_duration("1h30m") == 90 * 60_000
    assert parse_duration("0") == 0
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("7 days")
    assert parse_time("2026-01-01") == T0
    assert parse_time("2026-01-01T01:00:00+01:00") == T0
    assert parse_time(str(T0)) == T0
    with pytest.raises(ValueError, match="not a time"):
        parse_time("yesterday")


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_strict_merge_orders_kinds_and_ties(tmp_path: Path, suffix: str) -> None:
    tx = txns(300)
    tx.loc[10, "ts"] = tx.loc[9, "ts"]  # equal times keep file order
    write_transactions(tx, tmp_path / f"tx{suffix}")
    ev = pd.DataFrame({"event_id": ["v1", "v2", "v3"], "type": "login", "customer_id": "k",
                       "ts": [int(tx.ts[0]), int(tx.ts[50]), int(tx.ts[299]) + 1]})  # fmt: skip
    write_transactions(ev, tmp_path / f"ev{suffix}")
    lab = pd.DataFrame({"event_id": ["e00000", "e00050"], "is_fraud": [True, False],
                        "ts": [int(tx.ts[50]), int(tx.ts[51])],
                        "source": "chargeback"})  # fmt: skip
    write_transactions(lab, tmp_path / f"lab{suffix}")
    m = Merger(tmp_path / f"tx{suffix}", tmp_path / f"ev{suffix}", tmp_path / f"lab{suffix}",
               batch_size=64, chunk_rows=37)  # fmt: skip
    items = flat(list(m.batches()))
    assert len(items) == 305
    prio = {EVENT: 0, TRANSACTION: 1, LABEL: 2}
    keys = [(t, prio[k]) for k, t, _ in items]
    assert keys == sorted(keys)
    assert [e for k, _, e in items if k == TRANSACTION] == tx["event_id"].tolist()
    # at ts[50]: the event first, then the transaction, then the label
    at50 = [(k, e) for k, t, e in items if t == int(tx.ts[50])]
    assert at50[0] == (EVENT, "v2") and at50[-1] == (LABEL, "e00000")
    first = next(b for b in Merger(tmp_path / f"tx{suffix}").batches())
    rec = first.records[0]
    assert isinstance(rec, dict) and "is_fraud" not in rec and "fraud_pattern" not in rec
    assert rec["ts"] == int(tx.ts[0]) and rec["amount"] == tx.amount[0]


def test_generated_labels_follow_their_delay(tmp_path: Path) -> None:
    tx = txns(500)
    write_transactions(tx, tmp_path / "tx.parquet")
    delay = 2 * H
    out = list(Merger(tmp_path / "tx.parquet", label_delay_ms=delay, batch_size=50,
                      chunk_rows=64).batches())  # fmt: skip
    items = flat(out)
    labels = [(t, e) for k, t, e in items if k == LABEL]
    assert len(labels) == 500
    by_id = dict(zip(tx["event_id"], tx["ts"], strict=True))
    assert all(t == by_id[e] + delay for t, e in labels)
    assert [t for k, t, _ in items] == sorted(t for k, t, _ in items)  # strict: one ordered stream
    recs = [r for b in out if b.kind == LABEL for r in b.records]
    fraud = dict(zip(tx["event_id"], tx["is_fraud"], strict=True))
    assert all(isinstance(r, dict) and r["is_fraud"] == fraud[r["event_id"]] for r in recs)
    assert {r["source"] for r in recs if isinstance(r, dict)} == {"chargeback", "confirmed"}


def test_deferral_never_moves_a_label_earlier_and_bounds_the_wait(tmp_path: Path) -> None:
    tx = txns(2000, step=30_000)
    write_transactions(tx, tmp_path / "tx.parquet")
    defer = H
    out = list(Merger(tmp_path / "tx.parquet", label_delay_ms=3 * H, batch_size=200,
                      max_defer_ms=defer).batches())  # fmt: skip
    strict = list(Merger(tmp_path / "tx.parquet", label_delay_ms=3 * H, batch_size=200).batches())
    assert len(out) < len(strict) / 3  # fewer, larger batches
    items = flat(out)
    assert sorted(items, key=lambda i: (i[1], i[0] == LABEL, i[2])) == sorted(
        flat(strict), key=lambda i: (i[1], i[0] == LABEL, i[2]))  # same items  # fmt: skip
    tx_times = np.array([t for k, t, _ in items if k == TRANSACTION])
    tx_pos = np.array([i for i, (k, _, _) in enumerate(items) if k == TRANSACTION])
    for pos, (kind, t, _) in enumerate(items):
        if kind != LABEL:
            continue
        assert (tx_pos[tx_times < t] < pos).all()  # every earlier transaction came before
        assert (tx_pos[tx_times > t + defer] > pos).all()  # waited at most max_defer_ms


def test_deterministic(tmp_path: Path) -> None:
    write_transactions(txns(400), tmp_path / "tx.csv")
    runs = [flat(list(Merger(tmp_path / "tx.csv", label_delay_ms=H, batch_size=30,
                             max_defer_ms=H // 2).batches())) for _ in range(2)]  # fmt: skip
    assert runs[0] == runs[1]


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
@pytest.mark.parametrize("defer", [0, H])
def test_resume_from_any_batch_continues_exactly(tmp_path: Path, suffix: str, defer: int) -> None:
    tx = txns(600)
    path = tmp_path / f"tx{suffix}"
    write_transactions(tx, path)
    kw: dict[str, Any] = {"label_delay_ms": 3 * H, "batch_size": 40, "max_defer_ms": defer,
                          "chunk_rows": 53, "start_ms": int(tx.ts[20]),
                          "until_ms": int(tx.ts[580])}  # fmt: skip
    full = list(Merger(path, **kw).batches())
    expected = flat(full)
    for cut in (0, 1, len(full) // 3, len(full) // 2, len(full) - 2):
        resumed = list(Merger(path, position=full[cut].position, **kw).batches())
        assert flat(full[: cut + 1]) + flat(resumed) == expected, cut
    assert all(T0 <= t < int(tx.ts[580]) for _, t, _ in expected)
    assert min(t for _, t, _ in expected) >= int(tx.ts[20])


def test_malformed_rows_keep_their_place(tmp_path: Path) -> None:
    good = [{"event_id": f"e{i}", "ts": T0 + i * 1000, "card_id": "c", "merchant_id": "m",
             "amount": 5.0} for i in range(6)]  # fmt: skip
    lines = [orjson.dumps(r) for r in good[:2]] + [b"not json", b"[1, 2]"]
    lines += [orjson.dumps({**good[2], "ts": "yesterday"})] + [orjson.dumps(r) for r in good[3:]]
    (tmp_path / "tx.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    items = flat(list(Merger(tmp_path / "tx.jsonl").batches()))
    assert [e for _, _, e in items] == ["e0", "e1", b"not json", b"[1, 2]", "e2", "e3", "e4", "e5"]
    assert [t for _, t, _ in items][2:5] == [T0 + 1000] * 3  # ordered at the previous row's time
    # CSV: a bad ts or amount only affects its own row
    df = pd.DataFrame(good)
    df["ts"] = df["ts"].astype(str)
    df.loc[2, "ts"] = "yesterday"
    df["amount"] = df["amount"].astype(str)
    df.loc[4, "amount"] = "lots"
    df.to_csv(tmp_path / "tx.csv", index=False)
    batches = list(Merger(tmp_path / "tx.csv").batches())
    recs = [r for b in batches for r in b.records]
    assert len(recs) == 6 and all(isinstance(r, dict) for r in recs)
    assert recs[2]["ts"] == "yesterday" and recs[4]["amount"] == "lots"  # type: ignore[index]
    assert recs[3]["ts"] == T0 + 3000 and recs[3]["amount"] == 5.0  # type: ignore[index]
    assert count_rows(tmp_path / "tx.csv") == 6 and count_rows(tmp_path / "tx.jsonl") == 8


def test_out_of_order_rows_are_kept_in_file_order_and_counted(tmp_path: Path) -> None:
    tx = txns(50)
    tx.loc[20, "ts"] = int(tx.ts[5])
    write_transactions(tx, tmp_path / "tx.parquet")
    m = Merger(tmp_path / "tx.parquet")
    items = flat(list(m.batches()))
    assert [e for _, _, e in items] == tx["event_id"].tolist()
    assert m.stats.out_of_order == {TRANSACTION: 1}


def test_options_are_checked(tmp_path: Path) -> None:
    write_transactions(txns(5), tmp_path / "tx.parquet")
    with pytest.raises(ValueError, match="not both"):
        Merger(tmp_path / "tx.parquet", labels=tmp_path / "tx.parquet", label_delay_ms=1)
    with pytest.raises(ValueError, match="negative"):
        Merger(tmp_path / "tx.parquet", label_delay_ms=-1)
