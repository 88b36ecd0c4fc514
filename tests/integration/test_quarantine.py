"""Files never abort on a bad row: every file command, black-box through the CLI.

One JSON-lines file of simulated transactions where 1 % of the rows are bad, of every kind the
decoder knows (missing and empty fields, unreadable and out-of-range times, amounts that are
text, null, negative, refunds by ``type``, card numbers in the card field and in a free field,
lines that are not JSON or not an object, repeated event ids), plus 1 % valid zero-amount
verifications. ``replay``, ``backtest``, ``rules backtest``, ``train`` and ``drift report`` must
each finish, write ``DIR/rejected.parquet`` with exactly the planted rows (row number, a reason
the decoder would give, never the value), say how many in their summary, and with ``--strict``
stop at the first bad row with one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pandas as pd
import pytest
import redis

from replay.simulate import simulate
from replay.sources import write_transactions

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PAN = "4111111111111111"
#: kind -> (how to spoil a record, the reasons a command may give for it)
KINDS: dict[str, tuple[object, set[str]]] = {
    "missing_card": (lambda r: {k: v for k, v in r.items() if k != "card_id"}, {"missing_field"}),
    "empty_merchant": (lambda r: {**r, "merchant_id": ""}, {"wrong_type", "missing_field"}),
    "ts_text": (lambda r: {**r, "ts": "yesterday"}, {"invalid_timestamp"}),
    "ts_range": (lambda r: {**r, "ts": 17}, {"invalid_timestamp"}),
    "ts_future": (lambda r: {**r, "ts": 9_999_999_999_999}, {"invalid_timestamp"}),
    "amount_text": (lambda r: {**r, "amount": "12.5x"}, {"wrong_type", "invalid_amount"}),
    "amount_null": (lambda r: {**r, "amount": None}, {"missing_field", "invalid_amount"}),
    "refund_negative": (lambda r: {**r, "amount": -12.5}, {"refund_not_supported"}),
    "refund_type": (lambda r: {**r, "type": "reversal"}, {"refund_not_supported"}),
    "pan_card": (lambda r: {**r, "card_id": PAN}, {"card_number_detected"}),
    "pan_device": (lambda r: {**r, "device_id": "4111 1111 1111 1111"}, {"card_number_detected"}),
    "not_json": (lambda r: b'{"event_id": "broken', {"not_json", "missing_field"}),
    "not_object": (lambda r: b"[1, 2, 3]", {"not_object", "missing_field"}),
    "duplicate": (None, {"duplicate_event_id"}),
}


@pytest.fixture(scope="module")
def spoiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, str], int]:
    """(file, planted row -> kind, number of valid rows)."""
    df = simulate(days=10, seed=4, n_customers=300, n_merchants=80)
    cols = [c for c in df.columns if c != "fraud_pattern"]
    records = df[cols].to_dict("records")
    planted: dict[int, str] = {}
    kinds = list(KINDS)
    step = 100  # 1 %
    for j, i in enumerate(range(57, len(records), step)):
        kind = kinds[j % len(kinds)]
        spoil, _ = KINDS[kind]
        planted[i] = kind
        if spoil is None:  # a copy of an earlier row's event id
            records[i] = {**records[i], "event_id": records[i - 3]["event_id"]}
        else:
            records[i] = spoil(records[i])  # type: ignore[operator]
    for i in range(7, len(records), step):  # valid zero-amount verifications
        if i not in planted and isinstance(records[i], dict):
            records[i] = {**records[i], "amount": 0.0}
    path = tmp_path_factory.mktemp("quarantine") / "tx.jsonl"
    with path.open("wb") as f:
        for r in records:
            f.write((r if isinstance(r, bytes) else orjson.dumps(r)) + b"\n")
    assert set(planted.values()) == set(KINDS)
    return path, planted, len(records) - len(planted)


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True,
        env={**os.environ, **env}, timeout=600, check=False,
    )  # fmt: skip


def _check_rejected(out: Path, planted: dict[int, str], text: str) -> None:
    rejected = pd.read_parquet(out / "rejected.parquet")
    assert list(rejected.columns) == ["row", "reason", "detail"]
    assert sorted(rejected["row"]) == sorted(planted)
    for row, reason in zip(rejected["row"], rejected["reason"], strict=True):
        assert reason in KINDS[planted[int(row)]][1], (row, planted[int(row)], reason)
    assert PAN not in (out / "rejected.parquet").read_bytes().decode("latin-1")
    assert PAN not in text and "4111 1111" not in text
    assert "Traceback" not in text


def _db(stack: dict[str, str], db: int) -> str:
    base, _, _ = stack["RISKSTREAM_REDIS_URL"].rpartition("/")
    redis.Redis.from_url(f"{base}/{db}").flushdb()
    return f"{base}/{db}"


def test_replay_quarantines_and_strict_stops(
    spoiled: tuple[Path, dict[int, str], int], stack: dict[str, str], tmp_path: Path
) -> None:
    path, planted, valid = spoiled
    env = {"RISKSTREAM_REDIS_URL": _db(stack, 11), "RISKSTREAM_DATA_DIR": str(tmp_path / "d")}
    out = tmp_path / "replay"
    res = _cli(["replay", "--transactions", str(path), "--to", "inprocess", "--out", str(out),
                "--label-delay", "2d", "--no-progress"], env)  # fmt: skip
    assert res.returncode == 0, res.stderr
    _check_rejected(out, planted, res.stdout + res.stderr)
    decisions = pd.read_parquet(out / "decisions.parquet")
    assert len(decisions) == valid and decisions["event_id"].is_unique
    summary = " ".join((res.stdout + res.stderr).split())
    assert f"{len(planted):,} transaction rows quarantined" in summary
    # --strict: one line naming the first bad row, no traceback
    env["RISKSTREAM_REDIS_URL"] = _db(stack, 11)
    res = _cli(["replay", "--transactions", str(path), "--to", "inprocess", "--out",
                str(tmp_path / "strict"), "--no-progress", "--strict"], env)  # fmt: skip
    last = res.stderr.strip().splitlines()[-1]  # before it: the service's dead-letter warnings
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert last.startswith("riskstream: error:") and f"row {min(planted)}:" in last


def test_backtest_and_rules_backtest_quarantine(
    spoiled: tuple[Path, dict[int, str], int], stack: dict[str, str], tmp_path: Path
) -> None:
    path, planted, _ = spoiled
    env = {"RISKSTREAM_REDIS_URL": _db(stack, 12), "RISKSTREAM_DATA_DIR": str(tmp_path / "d")}
    period = ["--train-start", "2026-01-01", "--train-end", "2026-01-08",
              "--test-start", "2026-01-08", "--test-end", "2026-01-11"]  # fmt: skip
    out = tmp_path / "bt"
    res = _cli(["backtest", "--transactions", str(path), *period, "--out", str(out),
                "--label-delay", "2d"], env)  # fmt: skip
    assert res.returncode == 0, res.stderr
    _check_rejected(out, planted, res.stdout + res.stderr)
    assert f"quarantined {len(planted):,} rows" in " ".join((res.stdout + res.stderr).split())
    res = _cli(["backtest", "--transactions", str(path), *period, "--out", str(tmp_path / "s"),
                "--strict"], env)  # fmt: skip
    assert res.returncode == 2 and f"row {min(planted)}:" in res.stderr
    assert "Traceback" not in res.stderr

    out = tmp_path / "rbt"
    env["RISKSTREAM_REDIS_URL"] = _db(stack, 12)
    res = _cli(["rules", "backtest", "--transactions", str(path), "--label-delay", "2d",
                "--out", str(out)], env)  # fmt: skip
    assert res.returncode == 0, res.stderr
    _check_rejected(out, planted, res.stdout + res.stderr)
    assert f"quarantined {len(planted):,} rows" in " ".join((res.stdout + res.stderr).split())


def test_train_quarantines(
    spoiled: tuple[Path, dict[int, str], int], stack: dict[str, str], tmp_path: Path
) -> None:
    path, planted, _ = spoiled
    env = {"RISKSTREAM_REDIS_URL": _db(stack, 0 + 13), "RISKSTREAM_DATA_DIR": str(tmp_path / "d")}
    out = tmp_path / "train"
    res = _cli(["train", "--transactions", str(path), "--label-delay", "1d", "--train-start",
                "2026-01-02", "--train-end", "2026-01-07", "--valid-end", "2026-01-10",
                "--rounds", "30", "--no-progress", "--scratch-db", "14", "--out", str(out)],
               env)  # fmt: skip
    assert res.returncode == 0, res.stderr
    _check_rejected(out, planted, res.stdout + res.stderr)
    assert f"{len(planted):,} rows quarantined" in " ".join((res.stdout + res.stderr).split())
    res = _cli(["train", "--transactions", str(path), "--label-delay", "1d", "--train-start",
                "2026-01-02", "--train-end", "2026-01-07", "--strict", "--scratch-db", "14"],
               env)  # fmt: skip
    assert res.returncode == 2 and f"row {min(planted)}:" in res.stderr

    # drift report on the same file, against the model just trained (made the champion)
    listed = _cli(["models", "list", "--json"], env)
    assert listed.returncode == 0, listed.stderr
    versions = [m["version"] for m in orjson.loads(listed.stdout)]
    assert _cli(["models", "promote", versions[-1]], env).returncode == 0
    out = tmp_path / "drift"
    res = _cli(["drift", "report", "--transactions", str(path), "--out", str(out),
                "--scratch-db", "14"], env)  # fmt: skip
    assert res.returncode == 0, res.stderr
    _check_rejected(out, planted, res.stdout + res.stderr)
    assert f"quarantined {len(planted):,} rows" in " ".join((res.stdout + res.stderr).split())
    assert f"{len(planted):,} rows quarantined" in (out / "drift.html").read_text()
    report = orjson.loads((out / "drift.json").read_bytes())
    assert sum(report["quarantined"].values()) == len(planted)
    assert report["transactions"] == len(path.read_bytes().splitlines()) - len(planted)
    res = _cli(["drift", "report", "--transactions", str(path), "--out", str(tmp_path / "ds"),
                "--scratch-db", "14", "--strict"], env)  # fmt: skip
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"row {min(planted)}:" in res.stderr.strip().splitlines()[-1]


def _set_field(line: bytes, k: int, value: bytes) -> bytes:
    fields = line.rstrip(b"\n").split(b",")
    fields[k] = value
    return b",".join(fields) + b"\n"


@pytest.fixture(scope="module")
def spoiled_csv(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[int, tuple[str, ...]], int]:
    """A CSV export with lines that do not split into its header's fields (too many, too few, a
    quote that never closes, binary junk) and bad values in well-formed lines; a blank line."""
    df = simulate(days=6, seed=8, n_customers=200, n_merchants=60)
    base = tmp_path_factory.mktemp("quarantine-csv")
    write_transactions(df, base / "clean.csv")
    header, *rows = (base / "clean.csv").read_bytes().splitlines(keepends=True)
    width = header.count(b",") + 1
    spoil = [
        ("extra_fields", lambda r: r.rstrip(b"\n") + b",x,y\n"),
        ("few_fields", lambda r: b",".join(r.split(b",")[:4]) + b"\n"),
        ("open_quote", lambda r: b'"' + r),
        ("binary", lambda r: b"\x00\xff\xfe" + b"," * (width - 1) + b"\n"),
        ("amount_text", lambda r: _set_field(r, 5, b"12.5x")),
        ("ts_text", lambda r: _set_field(r, 1, b"yesterday")),
    ]
    reasons = {"extra_fields": ("malformed_row",), "few_fields": ("malformed_row",),
               "open_quote": ("malformed_row",), "binary": ("malformed_row",),
               "amount_text": ("invalid_amount", "wrong_type"),
               "ts_text": ("invalid_timestamp",)}  # fmt: skip
    out, planted = [header], {}
    for i, row in enumerate(rows):
        if i % 90 == 45:
            kind, fn = spoil[(i // 90) % len(spoil)]
            planted[len(out) - 1] = reasons[kind]
            out.append(fn(row))
        else:
            out.append(row)
        if i == 100:
            out.append(b"\n")  # a blank line is not a row: nothing after it shifts
    path = base / "tx.csv"
    path.write_bytes(b"".join(out))
    assert set(planted.values()) == set(reasons.values())
    planted = {row - (row > 101): why for row, why in planted.items()}
    return path, planted, len(rows) - len(planted)


def test_csv_lines_that_do_not_split_are_quarantined(
    spoiled_csv: tuple[Path, dict[int, tuple[str, ...]], int],
    stack: dict[str, str],
    tmp_path: Path,
) -> None:
    path, planted, valid = spoiled_csv
    env = {"RISKSTREAM_REDIS_URL": _db(stack, 11), "RISKSTREAM_DATA_DIR": str(tmp_path / "d")}
    for command in (["replay", "--to", "inprocess", "--no-progress"],
                    ["rules", "backtest", "--label-delay", "1d"]):  # fmt: skip
        out = tmp_path / command[0]
        res = _cli([*command, "--transactions", str(path), "--out", str(out)], env)
        assert res.returncode == 0, res.stderr
        assert "Traceback" not in res.stderr
        rejected = pd.read_parquet(out / "rejected.parquet")
        assert sorted(rejected["row"]) == sorted(planted)
        for row, reason in zip(rejected["row"], rejected["reason"], strict=True):
            assert reason in planted[int(row)], (command[0], row, planted[int(row)], reason)
        env["RISKSTREAM_REDIS_URL"] = _db(stack, 11)
    decisions = pd.read_parquet(tmp_path / "replay" / "decisions.parquet")
    assert len(decisions) == valid and decisions["event_id"].is_unique
    res = _cli(["backtest", "--transactions", str(path), "--train-start", "2026-01-01",
                "--train-end", "2026-01-04", "--test-start", "2026-01-04", "--test-end",
                "2026-01-07", "--out", str(tmp_path / "s"), "--strict"], env)  # fmt: skip
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"row {min(planted)}: {planted[min(planted)][0]}" in res.stderr


def test_a_labels_file_with_bad_rows(tmp_path: Path, stack: dict[str, str]) -> None:
    """``--labels`` of backtest, rules backtest and train: bad label rows go to
    ``rejected-labels.parquet`` (row, reason), the command finishes and says how many;
    ``--strict`` stops at the first."""
    df = simulate(days=10, seed=4, n_customers=150, n_merchants=40)
    tx = tmp_path / "tx.parquet"
    write_transactions(df, tx)
    lines = [orjson.dumps({"event_id": e, "ts": int(t) + 86_400_000, "is_fraud": bool(f)})
             for e, t, f in zip(df["event_id"], df["ts"], df["is_fraud"], strict=True)]  # fmt: skip
    t0 = 1_767_225_600_000
    bad = [b'{"event_id": "cut', orjson.dumps({"ts": t0, "is_fraud": True}),
           orjson.dumps({"event_id": "z", "ts": "soon", "is_fraud": True}),
           orjson.dumps({"event_id": "z", "ts": t0, "is_fraud": "?"})]  # fmt: skip
    planted = {}
    for k, i in enumerate(range(30, len(lines), 100)):
        lines[i] = bad[k % len(bad)]
        planted[i] = ("missing_field", "missing_field", "invalid_timestamp", "wrong_type")[k % 4]
    labels = tmp_path / "labels.jsonl"
    labels.write_bytes(b"\n".join(lines) + b"\n")
    env = {"RISKSTREAM_REDIS_URL": _db(stack, 12), "RISKSTREAM_DATA_DIR": str(tmp_path / "d")}
    period = ["--train-start", "2026-01-01", "--train-end", "2026-01-08",
              "--test-start", "2026-01-08", "--test-end", "2026-01-11"]  # fmt: skip
    out = tmp_path / "bt"
    res = _cli(["backtest", "--transactions", str(tx), "--labels", str(labels), *period,
                "--out", str(out)], env)  # fmt: skip
    assert res.returncode == 0, res.stderr
    rejected = pd.read_parquet(out / "rejected-labels.parquet")
    assert dict(zip(rejected["row"], rejected["reason"], strict=True)) == planted
    said = " ".join((res.stdout + res.stderr).split())
    assert f"quarantined {len(planted):,} label rows" in said
    res = _cli(["backtest", "--transactions", str(tx), "--labels", str(labels), *period,
                "--out", str(tmp_path / "s"), "--strict"], env)  # fmt: skip
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"row {min(planted)}: {planted[min(planted)]}" in res.stderr
    out = tmp_path / "rbt"
    env["RISKSTREAM_REDIS_URL"] = _db(stack, 12)
    res = _cli(["rules", "backtest", "--transactions", str(tx), "--labels", str(labels),
                "--out", str(out)], env)  # fmt: skip
    assert res.returncode == 0, res.stderr
    rejected = pd.read_parquet(out / "rejected-labels.parquet")
    assert dict(zip(rejected["row"], rejected["reason"], strict=True)) == planted
    assert f"quarantined {len(planted):,} label rows" in " ".join(res.stdout.split())
    res = _cli(["train", "--transactions", str(tx), "--labels", str(labels), "--train-start",
                "2026-01-02", "--train-end", "2026-01-07", "--strict", "--scratch-db", "14"],
               env)  # fmt: skip
    assert res.returncode == 2 and f"row {min(planted)}: {planted[min(planted)]}" in res.stderr


def test_backtest_with_labels_and_no_is_fraud_column(tmp_path: Path, stack: dict[str, str]) -> None:
    """The case ``--labels`` is for: a transactions file without ``is_fraud``. With the same
    labels file (a day-late label per event, in reverse time order, and an earlier opposite
    verdict on every 7th: the latest label wins) the report must equal the one from the file
    carrying each event's final label, and count the test period's frauds by the latest
    labels. It used to end in ``KeyError: 'is_fraud'`` after the scoring."""
    df = simulate(days=10, seed=8, n_customers=150, n_merchants=40)
    rows = [{"event_id": e, "ts": int(t) + 86_400_000, "is_fraud": bool(f)}
            for e, t, f in zip(df["event_id"], df["ts"], df["is_fraud"], strict=True)]  # fmt: skip
    rows += [{**r, "ts": r["ts"] - 3_600_000, "is_fraud": not r["is_fraud"]} for r in rows[::7]]
    labels = tmp_path / "labels.jsonl"
    labels.write_bytes(b"\n".join(orjson.dumps(r) for r in reversed(rows)) + b"\n")
    bare, truth = tmp_path / "bare.parquet", tmp_path / "truth.parquet"
    write_transactions(df.drop(columns=["is_fraud"]), bare)
    write_transactions(df, truth)
    period = ["--train-start", "2026-01-01", "--train-end", "2026-01-08",
              "--test-start", "2026-01-08", "--test-end", "2026-01-11"]  # fmt: skip
    reports = []
    for name in ("bare", "truth"):
        env = {"RISKSTREAM_REDIS_URL": _db(stack, 12), "RISKSTREAM_DATA_DIR": str(tmp_path / "d")}
        out = tmp_path / f"bt-{name}"
        res = _cli(["backtest", "--transactions", str(tmp_path / f"{name}.parquet"), "--labels",
                    str(labels), *period, "--out", str(out)], env)  # fmt: skip
        assert res.returncode == 0, res.stderr
        reports.append(json.loads((out / "report.json").read_text()))
    same = [k for k in reports[1] if "seconds" not in k and "per_second" not in k]
    assert {k: reports[0][k] for k in same} == {k: reports[1][k] for k in same}
    test = (df["ts"] >= 1_767_830_400_000) & (df["ts"] < 1_768_089_600_000)  # 8th to 11th
    assert reports[0]["n_test_frauds"] == int(df.loc[test, "is_fraud"].sum()) > 0


def test_a_file_whose_every_row_is_rejected(tmp_path: Path, stack: dict[str, str]) -> None:
    """No ``merchant_id`` column: every row quarantined; backtest then has nothing to train on
    and says so in one line (it used to end in a traceback from the trainer)."""
    df = simulate(days=10, seed=4, n_customers=60, n_merchants=20).drop(columns=["merchant_id"])
    path = tmp_path / "tx.parquet"
    df.to_parquet(path)
    env = {"RISKSTREAM_REDIS_URL": _db(stack, 12), "RISKSTREAM_DATA_DIR": str(tmp_path / "d")}
    res = _cli(["backtest", "--transactions", str(path), "--train-start", "2026-01-01",
                "--train-end", "2026-01-08", "--test-start", "2026-01-08", "--test-end",
                "2026-01-11", "--out", str(tmp_path / "bt")], env)  # fmt: skip
    assert res.returncode == 2 and "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert "the training period has no transactions" in last
    assert f"{len(df):,} rows of the file were quarantined" in last
    assert len(pd.read_parquet(tmp_path / "bt" / "rejected.parquet")) == len(df)


@pytest.mark.parametrize("content", [b"", b"event_id,ts,card_id,merchant_id,amount\n"])
def test_an_empty_file_is_one_line_or_nothing_to_do(
    content: bytes, tmp_path: Path, stack: dict[str, str]
) -> None:
    """A 0-byte CSV and one with only its header: replay and rules backtest have nothing to do;
    backtest says why it cannot run, in one line (the 0-byte file was a pandas traceback)."""
    path = tmp_path / "tx.csv"
    path.write_bytes(content)
    env = {"RISKSTREAM_REDIS_URL": _db(stack, 12), "RISKSTREAM_DATA_DIR": str(tmp_path / "d")}
    res = _cli(["replay", "--transactions", str(path), "--to", "inprocess", "--out",
                str(tmp_path / "r"), "--no-progress"], env)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert len(pd.read_parquet(tmp_path / "r" / "decisions.parquet")) == 0
    res = _cli(["backtest", "--transactions", str(path), "--train-start", "2026-01-01",
                "--train-end", "2026-01-08", "--test-start", "2026-01-08", "--test-end",
                "2026-01-11", "--out", str(tmp_path / "bt")], env)  # fmt: skip
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "has no is_fraud column: pass --labels FILE" in res.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("name", "content"),
    [("tx.parquet", b"PAR1 but not really" * 50), ("tx.csv", b"event_id,ts\xff,card_id\n"),
     ("tx.csv.gz", b"\x1f\x8b\x08 broken gzip")],
)  # fmt: skip
def test_a_file_that_is_not_what_its_name_says(
    name: str, content: bytes, tmp_path: Path, stack: dict[str, str]
) -> None:
    """Not Parquet, a header that is not UTF-8, a broken gzip stream: a bad file, not bad rows;
    every file command says so in one line naming the file (they were tracebacks)."""
    path = tmp_path / name
    path.write_bytes(content)
    env = {"RISKSTREAM_REDIS_URL": _db(stack, 12), "RISKSTREAM_DATA_DIR": str(tmp_path / "d")}
    period = ["--train-start", "2026-01-01", "--train-end", "2026-01-08"]
    for args in (["replay", "--to", "inprocess", "--no-progress"],
                 ["rules", "backtest", "--label-delay", "1d"],
                 ["backtest", *period, "--test-start", "2026-01-08", "--test-end", "2026-01-11",
                  "--out", str(tmp_path / "bt")],
                 ["train", *period, "--label-delay", "1d", "--scratch-db", "14"]):  # fmt: skip
        res = _cli([*args, "--transactions", str(path)], env)
        assert res.returncode == 2, (args, res.stderr)
        assert "Traceback" not in res.stderr, (args, res.stderr)
        last = res.stderr.strip().splitlines()[-1]
        assert last.startswith("riskstream: error:") and name in last, (args, last)
