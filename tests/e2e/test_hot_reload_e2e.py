"""A running worker picks up a changed rule set and a newly promoted champion without restart,
keeps the old rule set when the new one is invalid, and drops no batch meanwhile."""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import orjson
import pytest

from engine.settings import DEFAULT_RULES_DIR
from engine.sinks import ensure_topics
from engine.worker_process import WorkerProcess, metric_value, wait_until
from features.spec import DEFAULT_SPEC, feature_names
from models.registry import ModelRegistry
from models.train import train_lightgbm
from replay.kafka_io import json_items, produce, producer, read_topic

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

EXTRA_RULE = """
rules:
  - id: tiny_amount_tag
    description: Tag every transaction under 2 (added while the worker runs).
    condition: txn.amount < 2
    action: tag
    reason: tiny_amount
    priority: 90
    owner: e2e
"""


def test_rules_and_champion_hot_swap(stack: dict[str, str], tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    for f in DEFAULT_RULES_DIR.glob("*.yaml"):
        shutil.copy(f, rules_dir / f.name)
    tx, sc = f"tx-{suffix}", f"sc-{suffix}"
    env = {
        **stack, "RISKSTREAM_APP_ID": f"hot-{suffix}", "RISKSTREAM_DATA_DIR": str(tmp_path),
        "RISKSTREAM_RULES_DIR": str(rules_dir), "RISKSTREAM_TOPIC_TRANSACTIONS": tx,
        "RISKSTREAM_TOPIC_SCORES": sc, "RISKSTREAM_TOPIC_EVENTS": f"ev-{suffix}",
        "RISKSTREAM_TOPIC_LABELS": f"lb-{suffix}", "RISKSTREAM_TOPIC_REVIEW": f"rq-{suffix}",
        "RISKSTREAM_TOPIC_DEAD_LETTER": f"dl-{suffix}", "RISKSTREAM_TOPIC_PARTITIONS": "1",
    }  # fmt: skip
    bootstrap = stack["RISKSTREAM_KAFKA_BOOTSTRAP"]
    ensure_topics(bootstrap, [v for k, v in env.items() if k.startswith("RISKSTREAM_TOPIC_")
                              and not k.endswith("PARTITIONS")], 1)  # fmt: skip
    prod = producer(bootstrap)
    sent: list[str] = []

    def send(n: int) -> None:
        recs = [
            {"event_id": f"h{len(sent) + i}", "ts": 1767225600000 + (len(sent) + i) * 1000,
             "card_id": f"card_{i % 9}", "merchant_id": "m1", "amount": 1.0 + i % 5}
            for i in range(n)
        ]  # fmt: skip
        produce(prod, tx, json_items(recs, "card_id"))
        sent.extend(r["event_id"] for r in recs)

    def decisions() -> list[dict[str, object]]:
        values = read_topic(bootstrap, sc, lambda v: len(v) >= len(sent), timeout=120)
        return [orjson.loads(v) for v in values]

    with WorkerProcess(env, tmp_path / "worker.log") as worker:
        send(20)
        first = decisions()
        v1 = {d["rule_set"] for d in first}
        assert len(v1) == 1 and {d["model"] for d in first} == {"none"}

        (rules_dir / "extra.yaml").write_text(EXTRA_RULE)
        names = feature_names(DEFAULT_SPEC)
        rng = np.random.default_rng(0)
        x = rng.normal(size=(300, len(names)))
        scorer = train_lightgbm(x, x[:, 0] > 0, names, num_boost_round=10).scorer
        registry = ModelRegistry(tmp_path / "models")
        registry.promote(registry.register(scorer, {"source": "e2e"}))

        deadline = time.monotonic() + 30
        latest: dict[str, object] = {}
        while time.monotonic() < deadline:
            send(5)
            latest = decisions()[-1]
            if latest["rule_set"] not in v1 and latest["model"] == scorer.version:
                break
            time.sleep(1)
        assert latest["rule_set"] not in v1, "rule change not picked up"
        assert latest["model"] == scorer.version, "promoted champion not picked up"
        tiny = [d for d in decisions() if d["rule_set"] == latest["rule_set"]]
        assert all("rule:tiny_amount_tag" in d["reasons"] for d in tiny if d["amount"] < 2)
        v2 = latest["rule_set"]

        (rules_dir / "broken.yaml").write_text(
            "rules:\n  - id: broken\n    condition: txn.amount >\n"
        )
        time.sleep(3)
        send(10)
        after = decisions()[-10:]
        assert {d["rule_set"] for d in after} == {v2}  # the invalid set never replaced it
        assert wait_until(lambda: metric_value(
            worker.metrics(), "riskstream_rules_reload_failures_total") >= 1, 10)  # fmt: skip
        assert worker.alive()

    ids = [d["event_id"] for d in decisions()]
    assert sorted(ids) == sorted(sent)  # nothing dropped, nothing twice
