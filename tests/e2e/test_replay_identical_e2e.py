"""Replaying a file in-process and through Kafka with a running worker decides identically.

The same labelled file (simulated, with a few malformed rows) is replayed

* in-process (``replay_inprocess``, small batches, its own Redis database), and
* into Kafka (``replay_kafka``, as fast as possible) and consumed by a ``riskstream worker``
  child process (batches as they arrive, another Redis database),

with the same champion model, rule set and label delay; the ``scores`` records must equal the
in-process decisions event for event (score, decision, reasons, rule set, model version), and the
dead letters must have the same reasons.

Labels: both replays generate labels with the same delay and the worker consumes them from the
``labels`` topic. The default spec's only label features (merchant fraud rates) have a 7-day label
delay, so over a 3-day file no label can reach a feature and labels cannot change a decision here.
Over a longer file they can, and then the Kafka path is *not* deterministic: the worker consumes
``labels`` and ``transactions`` concurrently, with no event-time alignment between the two topics,
so a transaction may be scored before or after a label that in-process replay applied before it
(and a label that arrives before its transaction was scored is dropped as ``unknown_event``: in
this test's runs the worker saw about 15 % of the labels that way).
:func:`test_label_features_depend_on_when_labels_are_applied` pins that dependency down
in-process (no Kafka), where it is deterministic.

Topics have one partition: with several, the worker consumes the partitions unevenly, not in
event-time order; the feature store's watermark is global (one ``rs:wm:t`` key), so a partition
that lags by more than the allowed lateness (1 h of event time) is "too late" and left out of the
windows (with 3 partitions about 40 % of the transactions were), and features of entities shared
across cards (merchant, device, ip, customer) depend on the interleaving.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
import redis

from engine.settings import Settings
from engine.worker_process import WorkerProcess, metric_value, wait_until
from features.spec import DEFAULT_SPEC, feature_names
from models.registry import ModelRegistry
from models.train import train_lightgbm
from replay.kafka_io import read_topic
from replay.replay import ReplayOptions, replay_inprocess, replay_kafka
from replay.simulate import simulate
from replay.sources import write_transactions
from tests.e2e.support import db_url, unique_topics

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

DAY = 86_400_000
COMPARED = ("score", "decision", "reasons", "rule_set", "model")
#: the champion below scores at most ~0.8 on real features: block from 0.7 so all three occur
BLOCK_THRESHOLD = 0.7


def _fresh_db(url: str, db: int) -> str:
    u = db_url(url, db)
    client = redis.Redis.from_url(u)
    client.flushdb()
    client.close()
    return u


def _world_file(path: Path, days: int, n_customers: int, n_merchants: int) -> tuple[int, list[str]]:
    """A simulated JSON-lines file with malformed rows inserted at places in time order;
    returns the number of valid transactions and the dead-letter reasons expected."""
    df = simulate(days=days, seed=7, n_customers=n_customers, n_merchants=n_merchants)
    write_transactions(df, path)
    lines = path.read_bytes().splitlines()
    ts = df["ts"].to_numpy()
    bad: list[tuple[int, bytes, str]] = []
    for k, at in enumerate(np.linspace(50, len(lines) - 50, 6).astype(int).tolist()):
        t = int(ts[at])
        base = {"ts": t, "card_id": f"card_bad{k}", "merchant_id": "m_bad", "amount": 9.5}
        kinds = [
            (b"{this is not json", "not_json"),
            (orjson.dumps({**base, "event_id": f"bad{k}", "amount": -4.0}), "refund_not_supported"),
            (
                orjson.dumps(
                    {k2: v for k2, v in {**base, "event_id": f"bad{k}"}.items() if k2 != "card_id"}
                ),
                "missing_field",
            ),  # fmt: skip
        ]
        line, reason = kinds[k % len(kinds)]
        bad.append((at, line, reason))
    for at, line, _ in sorted(bad, reverse=True):
        lines.insert(at, line)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return len(df), sorted(r for _, _, r in bad)


def _promote_champion(data_dir: Path, seed: int = 3) -> str:
    """A small LightGBM champion trained on random features on the scales of real ones (counts,
    amounts, seconds), so that real feature values fall on both sides of its splits."""
    names = feature_names(DEFAULT_SPEC)
    rng = np.random.default_rng(seed)
    n = 4000
    x = rng.lognormal(mean=1.0, sigma=2.0, size=(n, len(names)))
    x[rng.random(x.shape) < 0.05] = np.nan
    logs = np.log(np.nan_to_num(x, nan=1.0))
    z = 4.0 * logs[:, [0, 1, 2, 4, 5, 19, 22, 23]].mean(axis=1) - 8.0
    y = rng.random(n) < 1.0 / (1.0 + np.exp(-z))
    params = {"scale_pos_weight": 1.0}
    scorer = train_lightgbm(x, y, names, params=params, num_boost_round=40).scorer
    registry = ModelRegistry(data_dir / "models")
    registry.promote(registry.register(scorer, {"source": "e2e replay"}))
    return scorer.version


def _decision_rows(frame: pd.DataFrame) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for rec in frame.to_dict("records"):
        out[str(rec["event_id"])] = {
            "score": float(rec["score"]),
            "decision": str(rec["decision"]),
            "reasons": [str(r) for r in rec["reasons"]],
            "rule_set": str(rec["rule_set"]),
            "model": str(rec["model"]),
        }
    return out


def _differences(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> list[str]:
    out = []
    for event_id, x in a.items():
        y = b.get(event_id)
        if y is None:
            out.append(f"{event_id}: missing")
            continue
        for name in COMPARED:
            same = abs(x[name] - y[name]) <= 1e-12 if name == "score" else x[name] == y[name]
            if not same:
                out.append(f"{event_id}.{name}: {x[name]!r} != {y[name]!r}")
    return out


def test_inprocess_and_kafka_replay_decide_identically(
    stack: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "tx.jsonl"
    n_valid, bad_reasons = _world_file(path, days=3, n_customers=600, n_merchants=120)
    data_dir = tmp_path / "data"
    champion = _promote_champion(data_dir)
    label_delay = DAY // 2

    # (a) in-process, small batches, database 1
    base = Settings(redis_url=stack["RISKSTREAM_REDIS_URL"],
                    kafka_bootstrap=stack["RISKSTREAM_KAFKA_BOOTSTRAP"])  # fmt: skip
    settings_a = Settings(redis_url=_fresh_db(base.redis_url, 1), data_dir=data_dir,
                          block_threshold=BLOCK_THRESHOLD)  # fmt: skip
    out = tmp_path / "inprocess"
    result_a = replay_inprocess(
        ReplayOptions(path, label_delay_ms=label_delay, out=out, batch_size=97, progress=False),
        settings_a,
    )
    assert result_a.complete and result_a.valid["transaction"] == n_valid
    assert sorted(Counter(result_a.dead_reasons).elements()) == bad_reasons
    assert result_a.sent["label"] > 0
    inproc = _decision_rows(pd.read_parquet(out / "decisions.parquet"))
    assert len(inproc) == n_valid
    decided = Counter(d["decision"] for d in inproc.values())
    assert min(decided[d] for d in ("allow", "review", "block")) >= 20, decided
    assert {d["model"] for d in inproc.values()} == {champion}
    assert len({d["score"] for d in inproc.values()}) > 50  # the model really scores

    # (b) into Kafka as fast as possible, consumed by a worker on database 2
    suffix, topics = unique_topics()
    env = {
        **stack, **topics, "RISKSTREAM_REDIS_URL": _fresh_db(base.redis_url, 2),
        "RISKSTREAM_APP_ID": f"replay-{suffix}", "RISKSTREAM_DATA_DIR": str(data_dir),
        "RISKSTREAM_TOPIC_PARTITIONS": "1", "RISKSTREAM_BLOCK_THRESHOLD": str(BLOCK_THRESHOLD),
    }  # fmt: skip
    settings_b = Settings(
        kafka_bootstrap=base.kafka_bootstrap, data_dir=tmp_path / "kafka-replay",
        topic_partitions=1, **{k.removeprefix("RISKSTREAM_").lower(): v
                               for k, v in topics.items()},
    )  # fmt: skip
    bootstrap = base.kafka_bootstrap
    with WorkerProcess(env, tmp_path / "worker.log") as worker:
        result_b = replay_kafka(
            ReplayOptions(path, to="kafka", label_delay_ms=label_delay, progress=False),
            settings_b,
        )
        assert result_b.complete and result_b.sent == result_a.sent
        values = read_topic(bootstrap, topics["RISKSTREAM_TOPIC_SCORES"],
                            lambda v: len(v) >= n_valid, timeout=300)  # fmt: skip
        dead = read_topic(bootstrap, topics["RISKSTREAM_TOPIC_DEAD_LETTER"],
                          lambda v: len(v) >= len(bad_reasons), timeout=60)  # fmt: skip
        labels = topics["RISKSTREAM_TOPIC_LABELS"]
        assert wait_until(
            lambda: (
                metric_value(worker.metrics(), "riskstream_events_total", {"topic": labels})
                >= result_a.sent["label"]
            ),
            60,
        )
        text = worker.metrics()
        assert worker.alive()

    assert metric_value(text, "riskstream_late_events_total") == 0
    records = [orjson.loads(v) for v in values]
    ids = [r["event_id"] for r in records]
    assert len(ids) == len(set(ids)) == n_valid  # one decision each, none twice
    kafka = _decision_rows(pd.DataFrame(records))
    assert sorted(orjson.loads(v)["reason"] for v in dead) == bad_reasons
    diffs = _differences(inproc, kafka)
    assert not diffs, f"{len(diffs)} differences, e.g. {diffs[:10]}"


def test_label_features_depend_on_when_labels_are_applied(
    stack: dict[str, str], tmp_path: Path
) -> None:
    """Why labels are left out of the exactness claim for files longer than the label features'
    delay: the same transactions scored with labels applied at their event time (in-process
    replay) or later (a worker whose labels agent lags behind its transactions agent, the worst
    case being "not yet") get other merchant fraud rates, and so possibly other scores. Every
    feature that does not read labels is the same."""
    path = tmp_path / "tx.jsonl"
    n_valid, _ = _world_file(path, days=10, n_customers=150, n_merchants=25)
    frames = []
    for db, delay in ((3, DAY), (4, None)):
        settings = Settings(redis_url=_fresh_db(stack["RISKSTREAM_REDIS_URL"], db),
                            data_dir=tmp_path / f"data{db}")  # fmt: skip
        out = tmp_path / f"out{db}"
        replay_inprocess(ReplayOptions(path, label_delay_ms=delay, out=out, progress=False),
                         settings)  # fmt: skip
        frames.append(pd.read_parquet(out / "decisions.parquet").set_index("event_id"))
    on_time, never = frames
    assert len(on_time) == len(never) == n_valid
    label_cols = [f.name for f in DEFAULT_SPEC if f.agg in ("fraud_count", "fraud_rate")]
    other = [c for c in feature_names(DEFAULT_SPEC) if c not in label_cols]
    pd.testing.assert_frame_equal(on_time[other], never.loc[on_time.index, other])
    assert (never[label_cols].fillna(0) == 0).all().all()
    assert (on_time[label_cols].fillna(0) > 0).any().any()
