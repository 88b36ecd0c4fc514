"""Backtest through the real pipeline on a real Redis, and Redis-backed lists."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from engine.cli_rules import app
from replay.simulate import simulate
from replay.sources import write_transactions
from rules import load_rule_set

pytestmark = pytest.mark.integration
RULES_DIR = Path(__file__).resolve().parents[2] / "rules"
FEATURES = ["card_id_count_1h"]


def test_backtest_reports_per_rule_and_diff(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    df = simulate(days=3, seed=5, n_customers=300, n_merchants=60)
    tx = tmp_path / "tx.parquet"
    write_transactions(df, tx)
    other = tmp_path / "other"
    other.mkdir()
    for p in RULES_DIR.glob("*.yaml"):
        shutil.copy(p, other / p.name)
    text = (other / "default.yaml").read_text()
    (other / "default.yaml").write_text(
        text.replace("f.card_id_count_1h >= 8", "f.card_id_count_1h >= 3")
        + "  - {id: any_ecom, condition: \"txn.channel == 'ecom'\", action: tag, reason: ecom}\n"
    )
    monkeypatch.setenv("RISKSTREAM_REDIS_URL", redis_url)
    out = tmp_path / "bt.json"
    res = CliRunner().invoke(
        app,
        [
            "backtest",
            "--transactions",
            str(tx),
            "--rules",
            str(other),
            "--against",
            str(RULES_DIR),
            "--label-delay",
            "1d",
            "--json",
            str(out),
        ],  # fmt: skip
    )
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["transactions"] == len(df)
    rules = {r["id"]: r for r in report["rule_set"]["rules"]}
    assert set(rules) == {r.id for r in load_rule_set(other, FEATURES_ALL).rules}
    ecom = rules["any_ecom"]
    assert ecom["hits"] == int((df["channel"] == "ecom").sum())
    assert ecom["alerts_per_day"] == pytest.approx(ecom["hits"] / report["days"], rel=1e-4)
    burst = rules["card_testing_burst"]
    old = {r["id"]: r for r in report["against"]["rules"]}
    assert burst["hits"] >= old["card_testing_burst"]["hits"]
    assert 0 <= (burst["precision"] or 0) <= 1 and 0 <= (burst["recall"] or 0) <= 1
    assert report["diff"]["added"] == ["any_ecom"]
    assert report["diff"]["changed"] == ["card_testing_burst"]
    assert report["diff"]["rules"]["any_ecom"]["hits_delta"] == ecom["hits"]
    assert report["mature_transactions"] < report["transactions"]
    assert "card_testing_burst" in res.output and "precision" in res.output
    # Its keys were namespaced and removed afterwards.
    assert not list(redis.Redis.from_url(redis_url).scan_iter(match="rs:backtest:*"))


FEATURES_ALL = [
    "card_id_count_1h", "card_id_sum_1h", "card_id_mean_1h", "card_id_count_24h",
    "card_id_sum_24h", "card_id_mean_24h", "merchant_id_count_24h", "customer_id_count_24h",
    "card_id_zero_amount_count_1h",
]  # fmt: skip


def test_redis_lists_update_without_reload(tmp_path: Path, redis_client: redis.Redis) -> None:
    (tmp_path / "r.yaml").write_text(
        "lists:\n  blocked: {source: redis, key: 'test:blocked_cards'}\nrules:\n"
        "  - {id: blocked, condition: txn.card_id in lists.blocked, action: block, reason: b}\n"
    )
    rs = load_rule_set(tmp_path, FEATURES)
    redis_client.sadd("test:blocked_cards", "c1")
    rs.attach_redis(redis_client, ttl_seconds=0.2)
    version = rs.version
    assert [h.rule_id for h in rs.evaluate({"card_id": "c1"}, {})] == ["blocked"]
    assert rs.evaluate({"card_id": "c2"}, {}) == []
    redis_client.sadd("test:blocked_cards", "c2")
    time.sleep(0.25)
    assert [h.rule_id for h in rs.evaluate({"card_id": "c2"}, {})] == ["blocked"]
    assert rs.version == version
    # Redis going away keeps the last members and counts the failure.
    rs.attach_redis(redis.Redis(port=1, socket_connect_timeout=0.2), ttl_seconds=0)
    assert [h.rule_id for h in rs.evaluate({"card_id": "c2"}, {})] == ["blocked"]
    assert rs.list_refresh_failures >= 1
