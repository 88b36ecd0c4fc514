"""Batches submitted ahead of their reads (replays, backtests) give the same features as one
batch at a time, and keep the order of batches and labels on the server."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from features.reference import reference_features
from features.spec import DEFAULT_SPEC, FeatureSpec
from features.store import Pending, RedisFeatureStore
from tests.unit.test_features_kernels import T0, assert_features_equal, random_stream

pytestmark = pytest.mark.integration
HOUR = 3_600_000


def _labelled_run(store: RedisFeatureStore, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """The random stream in batches of 100 (about 1.2 h of event time), labels known 2 h after
    each transaction applied before the batch that ends after them (the store counts a label
    only for transactions at or after its time), ``depth`` batches in flight. Returns the
    store's features and the offline reference's."""
    ids, ts, amounts, ents = random_stream(2400, seed=21, cards=25, dup_rate=0.02)
    rng = np.random.default_rng(2)
    fraud = rng.random(len(ids)) < 0.2
    label_ts = ts + 2 * HOUR
    order = np.argsort(label_ts, kind="stable")  # redeliveries repeat older times
    inflight: list[Pending[np.ndarray]] = []
    parts: list[np.ndarray] = []
    labelled = 0
    labels: dict[str, tuple[int, bool]] = {}
    for a in range(0, len(ids), 100):
        b = min(a + 100, len(ids))
        due = int(np.searchsorted(label_ts[order], ts[a:b].max(), side="right"))
        if due > labelled:
            todo = order[labelled:due]
            store.submit_labels([ids[i] for i in todo], label_ts[todo], fraud[todo])
            for i in todo.tolist():
                labels.setdefault(ids[i], (int(label_ts[i]), bool(fraud[i])))
            labelled = due
        sub = {k: v[a:b] for k, v in ents.items()}
        inflight.append(store.submit_batch(ids[a:b], ts[a:b], amounts[a:b], sub))
        if len(inflight) > depth:
            parts.append(inflight.pop(0).result())
    parts += [p.result() for p in inflight]
    want = reference_features(ids, ts, amounts, ents, store.spec, labels=labels)
    return np.vstack(parts), want


SPEC = [
    *DEFAULT_SPEC[:8],
    FeatureSpec.of("merchant_id", "fraud_rate", 86400, 3600, label_delay_seconds=2 * 3600),
    FeatureSpec.of("card_id", "fraud_count", 86400, 3600, label_delay_seconds=2 * 3600),
]


@pytest.mark.parametrize("depth", [1, 3])
def test_submitted_batches_match_reference(redis_client: redis.Redis, depth: int) -> None:
    store = RedisFeatureStore(redis_client, SPEC)
    got, want = _labelled_run(store, depth)
    assert_features_equal(got, want, store.feature_names)
    assert np.nanmax(got[:, store.feature_names.index("card_id_fraud_count_24h_delay2h")]) > 0


def test_a_synchronous_call_waits_behind_submitted_ones(redis_client: redis.Redis) -> None:
    store = RedisFeatureStore(redis_client)
    count = store.feature_names.index("card_id_count_1h")
    ts = np.array([T0, T0 + 1000], dtype=np.int64)
    first = store.submit_batch(["a", "b"], ts, np.array([1.0, 2.0]), {"card_id": ["c", "c"]})
    x = store.update_batch(["c"], ts[1:] + 1, np.array([3.0]), {"card_id": ["c"]})
    assert x[0, count] == 3  # the submitted batch was applied first
    assert first.result()[:, count].tolist() == [1, 2]
    assert store.round_trips == 2


def test_an_error_reply_fails_only_its_call(redis_client: redis.Redis) -> None:
    store = RedisFeatureStore(redis_client)
    redis_client.set("rs:wm:t", "not a number")  # the script cannot compare it: an error reply
    ts = np.array([T0], dtype=np.int64)
    bad = store.submit_batch(["a"], ts, np.array([1.0]), {"card_id": ["c"]})
    labels = store.submit_labels(["zz"], [T0 + 1], [True])
    with pytest.raises(redis.exceptions.ResponseError):
        bad.result()
    assert labels.result() == 0  # the next call's reply is still read correctly
    redis_client.delete("rs:wm:t")
    x = store.update_batch(["a"], ts, np.array([1.0]), {"card_id": ["c"]})
    assert x[0, store.feature_names.index("card_id_count_1h")] == 1


def test_a_lost_connection_fails_every_call_in_flight_and_the_store_recovers(
    redis_client: redis.Redis,
) -> None:
    store = RedisFeatureStore(redis_client)
    count = store.feature_names.index("card_id_count_1h")
    ts = np.array([T0], dtype=np.int64)
    redis_client.execute_command("CLIENT", "PAUSE", 2000, "WRITE")  # the scripts wait
    first = store.submit_batch(["a"], ts, np.array([1.0]), {"card_id": ["c"]})
    labels = store.submit_labels(["a"], [T0 + 10], [True])
    redis_client.client_kill_filter(_type="normal", skipme=True)  # the store's connection
    redis_client.execute_command("CLIENT", "UNPAUSE")
    for call in (first, labels):  # applied or not: unknown, so the caller retries the batch
        with pytest.raises(redis.exceptions.ConnectionError):
            call.result()
    again = store.update_batch(["a"], ts, np.array([1.0]), {"card_id": ["c"]})
    assert again[0, count] == 1  # idempotent: the retry counts "a" once either way


def test_a_retry_read_before_the_batch_in_flight_is_finished_in_send_order(
    redis_client: redis.Redis,
) -> None:
    """The worker's retry pattern: batch A is read, batch B is already sent, A fails after its
    features (a stage raised) and is sent again, and the retry is read before B. Every read
    equals the reference; the retry is a redelivery, B is not (the fault suite's
    ``poison_after_features`` dead-lettered ~100 innocent events when the retry was finished
    before B: "feature cache out of step with the server")."""
    store = RedisFeatureStore(redis_client)
    ids, ts, amounts, ents = random_stream(400, seed=5, cards=6, dup_rate=0.0)

    def submit(a: int, b: int) -> Pending[np.ndarray]:
        return store.submit_batch(ids[a:b], ts[a:b], amounts[a:b],
                                  {k: v[a:b] for k, v in ents.items()})  # fmt: skip

    want = reference_features(ids, ts, amounts, ents, store.spec)
    warm = submit(0, 100).result()  # the worker's copy now holds the buckets A and B touch
    first = submit(100, 200)
    nxt = submit(200, 300)  # in flight while A is read and fails
    got_a = first.result()
    retry = submit(100, 200)
    got_retry = retry.result()
    assert store.redelivered.all()
    got_b = nxt.result()
    assert not store.redelivered.any()
    assert retry.result() is got_retry and store.redelivered.all()  # read again: same view
    rest = store.update_batch(ids[300:], ts[300:], amounts[300:],
                              {k: v[300:] for k, v in ents.items()})  # fmt: skip
    for got, (a, b) in [(warm, (0, 100)), (got_a, (100, 200)), (got_retry, (100, 200)),
                        (got_b, (200, 300)), (rest, (300, 400))]:  # fmt: skip
        assert_features_equal(got, want[a:b], store.feature_names)


def test_a_synchronous_batch_is_finished_after_the_ones_in_flight(
    redis_client: redis.Redis,
) -> None:
    """``update_batch`` (and account events) while a submitted batch is unread: the submitted
    one is finished first, then the synchronous one, both equal to the reference."""
    store = RedisFeatureStore(redis_client)
    ids, ts, amounts, ents = random_stream(300, seed=6, cards=6, dup_rate=0.0)
    want = reference_features(ids, ts, amounts, ents, store.spec)
    sub = {k: v[:100] for k, v in ents.items()}
    warm = store.update_batch(ids[:100], ts[:100], amounts[:100], sub)
    pending = store.submit_batch(ids[100:200], ts[100:200], amounts[100:200],
                                 {k: v[100:200] for k, v in ents.items()})  # fmt: skip
    later = store.update_batch(ids[200:], ts[200:], amounts[200:],
                               {k: v[200:] for k, v in ents.items()})  # fmt: skip
    assert_features_equal(warm, want[:100], store.feature_names)
    assert_features_equal(pending.result(), want[100:200], store.feature_names)
    assert_features_equal(later, want[200:], store.feature_names)
