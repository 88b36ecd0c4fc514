"""The review store, queue index and CLI on a real Valkey (and Tansu for the labels topic)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from engine.review.bench import fill, synthetic_cases
from engine.review.index import QueueFilter, QueueIndex
from engine.review.service import ReviewService
from engine.review.store import OUTBOX_KEY, CaseStore
from engine.review.users import Accounts, hash_password
from engine.settings import Settings
from engine.sinks import ensure_topics
from replay.kafka_io import read_topic

pytestmark = pytest.mark.integration


def _reference(cases: list[dict[str, Any]], flt: QueueFilter, now: float) -> list[str]:
    """The queue's filter and ranking, written the plain way."""
    out = []
    for c in cases:
        txn = c["transaction"]
        if flt.reason and flt.reason not in c["reasons"]:
            continue
        if flt.country and txn["country"] != flt.country:
            continue
        if flt.merchant and c["merchant_id"] != flt.merchant:
            continue
        if flt.amount_min is not None and c["amount"] < flt.amount_min:
            continue
        if flt.amount_max is not None and c["amount"] > flt.amount_max:
            continue
        if flt.older_than is not None and c["scored_at"] > now - flt.older_than * 60:
            continue
        out.append(c)
    out.sort(key=lambda c: (-c["expected_loss"], c["scored_at"]))
    return [c["event_id"] for c in out]


def test_filters_and_ranking_match_a_plain_reference_and_survive_changes(
    redis_client: redis.Redis,
) -> None:
    cases = synthetic_cases(3000, seed=3)
    fill(redis_client, cases)
    idx = QueueIndex()
    idx.load(redis_client)
    now = time.time()
    filters = [
        QueueFilter(size=100),
        QueueFilter(country="KP", size=20, page=2),
        QueueFilter(reason="rule:large_amount", amount_min=50, amount_max=400, size=30),
        QueueFilter(merchant=cases[7]["merchant_id"]),
        QueueFilter(older_than=24 * 60, reason="model:amount", size=500),
        QueueFilter(country="XX"),
    ]
    for flt in filters:
        want = _reference(cases, flt, now)
        page = idx.query(flt, now=now)
        start = (page.page - 1) * flt.size
        assert page.total == len(want)
        assert [r["event_id"] for r in page.rows] == want[start : start + flt.size]

    # Decisions, a needs-more-info and a re-open, seen through the change stream only.
    store = CaseStore(redis_client)
    top = [r["event_id"] for r in idx.query(QueueFilter(size=5)).rows]
    assert store.decide(top[0], "ann", "fraud", "", {"event_id": top[0]})["ok"]
    assert store.decide(top[1], "ann", "needs_more_info", "ask the customer", None)["ok"]
    assert store.decide(top[2], "ann", "legitimate", "", {"event_id": top[2]})["ok"]
    assert store.reopen(top[2], "lee", "second look")["ok"]
    fill(redis_client, synthetic_cases(10, seed=9, start=10_000))
    assert idx.refresh(redis_client)
    fresh = QueueIndex()
    fresh.load(redis_client)
    for flt in (QueueFilter(size=500), QueueFilter(status="needinfo")):
        assert [r["event_id"] for r in idx.query(flt, now=now).rows] == [
            r["event_id"] for r in fresh.query(flt, now=now).rows
        ]
    assert idx.query(QueueFilter(status="needinfo")).rows[0]["event_id"] == top[1]
    assert len(idx) == 3000 + 10 - 1
    # A needs-more-info case can still get its final verdict; it leaves the index.
    assert store.decide(top[1], "bob", "legitimate", "customer confirmed", {"event_id": top[1]})[
        "ok"
    ]
    idx.refresh(redis_client)
    assert idx.query(QueueFilter(status="needinfo")).total == 0
    audit = store.audit_log()
    assert [(a["action"], a["event_id"], a["after"]) for a in reversed(audit)] == [
        ("verdict", top[0], "fraud"), ("verdict", top[1], "needs_more_info"),
        ("verdict", top[2], "legitimate"), ("reopen", top[2], "open"),
        ("verdict", top[1], "legitimate"),
    ]  # fmt: skip
    assert audit[1]["before"] == "legitimate by ann"


def test_a_verdict_is_written_once_under_a_race_and_claims_expire(
    redis_client: redis.Redis,
) -> None:
    fill(redis_client, synthetic_cases(3, seed=1))
    store = CaseStore(redis_client, claim_seconds=1)
    results: list[dict[str, Any]] = []
    barrier = threading.Barrier(8)

    def decide(i: int) -> None:
        mine = CaseStore(redis.Redis.from_url(_url(redis_client)))
        barrier.wait()
        results.append(mine.decide("bench-0", f"a{i}", "fraud", "", {"event_id": "bench-0"}))

    threads = [threading.Thread(target=decide, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r["ok"] for r in results) == 1
    winner = next(r["record"]["analyst"] for r in results if r["ok"])
    assert {r["verdict"]["analyst"] for r in results if not r["ok"]} == {winner}
    assert redis_client.hlen(OUTBOX_KEY) == 1

    assert store.claim("bench-1", "ann")["ok"]
    refused = store.claim("bench-1", "bob")
    assert not refused["ok"] and refused["analyst"] == "ann"
    assert not store.decide("bench-1", "bob", "fraud", "", None)["ok"]
    time.sleep(2.1)
    assert store.claim("bench-1", "bob")["ok"]


def _url(client: redis.Redis) -> str:
    kw = client.connection_pool.connection_kwargs
    return f"redis://{kw['host']}:{kw['port']}/{kw.get('db', 0)}"


def test_passwords_are_salted_slow_hashes(redis_client: redis.Redis) -> None:
    a, b = hash_password("same password"), hash_password("same password")
    assert a["salt"] != b["salt"] and a["hash"] != b["hash"] and a["n"] >= 2**14
    acc = Accounts(redis_client)
    acc.add_user("ann", "long enough", "analyst")
    assert b"long enough" not in redis_client.hget("rs:review:users", "ann")  # type: ignore[operator]
    assert acc.authenticate("ann", "long enough") is not None
    assert acc.authenticate("ann", "wrong one") is None
    assert acc.authenticate("nobody", "long enough") is None
    for _ in range(10):  # password guessing locks the name for a while, right password or not
        assert acc.authenticate("ann", "guess") is None
    assert acc.locked("ann") and acc.authenticate("ann", "long enough") is None


def _cli(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", "review", *args], input=stdin, text=True,
        capture_output=True, env={**os.environ, **env}, timeout=120,
    )  # fmt: skip


@pytest.mark.slow
def test_the_cli_lists_shows_and_decides_like_the_pages(
    redis_client: redis.Redis, redis_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    labels_topic = f"lb-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_bootstrap, [labels_topic], 1)
    env = {"RISKSTREAM_REDIS_URL": redis_url, "RISKSTREAM_KAFKA_BOOTSTRAP": kafka_bootstrap,
           "RISKSTREAM_TOPIC_LABELS": labels_topic,
           "RISKSTREAM_DATA_DIR": str(tmp_path)}  # fmt: skip
    cases = synthetic_cases(200, seed=5)
    fill(redis_client, cases)

    assert _cli(env, "add-user", "ann", "--password-stdin", stdin="ann-secret-1\n").returncode == 0
    bad = _cli(env, "add-user", "Bad Name!", "--password-stdin", stdin="whatever-long\n")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr

    listed = _cli(env, "list", "--country", "KP", "--size", "500", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    want = _reference(cases, QueueFilter(country="KP"), time.time())
    assert [r["event_id"] for r in rows] == want
    # The same page through the service the web app uses.
    svc = ReviewService(Settings(redis_url=redis_url))
    assert [r["event_id"] for r in svc.page(QueueFilter(country="KP", size=500)).rows] == [
        r["event_id"] for r in rows
    ]

    target = rows[0]["event_id"]
    shown = _cli(env, "show", target, "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["event_id"] == target

    misuse = _cli(env, "decide", target, "--verdict", "maybe", "--user", "ann")
    assert misuse.returncode == 2 and "verdict must be one of" in misuse.stderr
    ok = _cli(env, "decide", target, "--verdict", "fraud", "--user", "ann", "--comment", "cli")
    assert ok.returncode == 0, ok.stderr
    again = _cli(env, "decide", target, "--verdict", "legitimate", "--user", "ann")
    assert again.returncode == 2 and "already decided by ann" in again.stderr

    labels = [orjson.loads(v) for v in read_topic(kafka_bootstrap, labels_topic,
                                                  lambda v: len(v) >= 1, timeout=30)]  # fmt: skip
    assert len(labels) == 1
    assert {k: labels[0][k] for k in ("event_id", "is_fraud", "source", "analyst")} == {
        "event_id": target, "is_fraud": True, "source": "analyst", "analyst": "ann"
    }
    assert redis_client.hlen(OUTBOX_KEY) == 0
    after = _cli(env, "list", "--country", "KP", "--size", "500", "--json")
    assert target not in after.stdout


@pytest.mark.slow
def test_lead_figures_follow_later_chargebacks_and_reassign_is_audited(
    redis_client: redis.Redis, redis_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    from confluent_kafka import Producer

    from engine.review.service import OutcomeFollower
    from engine.review.users import User

    labels_topic = f"lb-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_bootstrap, [labels_topic], 1)
    settings = Settings(redis_url=redis_url, kafka_bootstrap=kafka_bootstrap,
                        topic_labels=labels_topic, data_dir=tmp_path,
                        app_id="t-outcomes")  # fmt: skip
    fill(redis_client, synthetic_cases(20, seed=2))
    svc = ReviewService(settings)
    ann, lee = User("ann", "analyst"), User("lee", "lead")
    # Four final verdicts: two "fraud" (one later confirmed, one contradicted), two "legitimate"
    # (one later charged back: a missed fraud).
    for eid, verdict in (("bench-0", "fraud"), ("bench-1", "fraud"),
                         ("bench-2", "legitimate"), ("bench-3", "legitimate")):  # fmt: skip
        assert svc.store.claim(eid, "ann")["ok"]
        svc.decide(eid, ann, verdict)
    prod = Producer({"bootstrap.servers": kafka_bootstrap})
    for eid, is_fraud in (("bench-0", True), ("bench-1", False), ("bench-3", True),
                          ("not-a-case", True)):  # fmt: skip
        label = {"event_id": eid, "ts": 1768003200000, "is_fraud": is_fraud,
                 "source": "chargeback" if is_fraud else "confirmed"}  # fmt: skip
        prod.produce(labels_topic, orjson.dumps(label))
    prod.flush(10)
    follower = OutcomeFollower(settings, svc.store)
    follower.start()
    try:
        deadline = time.monotonic() + 60
        while redis_client.hlen("rs:review:outcomes") < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        follower.stopping.set()
        follower.join(10)
    figures = svc.lead_figures()
    assert figures["outcomes_known"] == 3  # the analyst labels and the non-case are not kept
    assert (figures["fraud_verdicts"], figures["fraud_confirmed"]) == (2, 1)
    assert figures["fraud_precision"] == 0.5
    assert (figures["legit_verdicts"], figures["legit_with_chargeback"]) == (2, 1)
    assert figures["legit_missed_rate"] == 0.5
    assert figures["rows"][0]["analyst"] == "ann" and figures["rows"][0]["total"] == 4

    # Re-assign: bob holds the case now, ann cannot decide it, and the audit says who moved it.
    assert svc.store.claim("bench-5", "ann")["ok"]
    svc.reassign("bench-5", lee, User("bob", "analyst"))
    assert not svc.store.decide("bench-5", "ann", "fraud", "", None)["ok"]
    with pytest.raises(Exception, match="only a lead"):
        svc.reassign("bench-5", ann, lee)
    last = svc.store.audit_log(1)[0]
    assert (last["actor"], last["action"], last["before"], last["after"]) == (
        "lee", "reassign", "ann", "bob"
    )
