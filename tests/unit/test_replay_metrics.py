"""The handbook's evaluation protocol on hand-made cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from replay.metrics import (
    DAY_MS,
    card_precision_at_k_daily,
    handbook_metrics,
    handbook_split,
    known_compromised,
    oracle_card_precision_at_k,
    to_day,
)

D0 = to_day("2018-07-25")


def frame(rows: list[tuple[int, str, bool]]) -> pd.DataFrame:
    """(day offset from D0, card, is_fraud) → a frame with ts at noon of that day."""
    return pd.DataFrame({
        "ts": [(D0 + d) * DAY_MS + 43_200_000 + i for i, (d, _, _) in enumerate(rows)],
        "card_id": [c for _, c, _ in rows],
        "is_fraud": [f for _, _, f in rows],
    })  # fmt: skip


def test_one_day_top_k_by_max_score_and_precision_over_k() -> None:
    df = frame([(0, "a", False), (0, "a", True), (0, "b", False), (0, "c", True)])
    # card a: max 0.9 (its fraud); b: 0.8; c: 0.1
    cp = card_precision_at_k_daily(df, [0.9, 0.2, 0.8, 0.1], k=2)
    assert cp.per_day == [0.5] and cp.detected == [["a"]]
    # fewer cards than k: still divided by k, as in the handbook
    assert card_precision_at_k_daily(df, [0.9, 0.2, 0.8, 0.1], k=4).mean == 0.5
    assert card_precision_at_k_daily(df, [0.1, 0.1, 0.9, 0.8], k=1).mean == 0.0


def test_detected_cards_are_removed_from_later_days() -> None:
    df = frame([(0, "a", True), (0, "b", False), (1, "a", True), (1, "b", False),
                (1, "c", True)])  # fmt: skip
    cp = card_precision_at_k_daily(df, [0.9, 0.1, 0.9, 0.5, 0.4], k=1)
    # day 1: a was detected on day 0, so b (0.5) is the top card, and it is legit
    assert cp.per_day == [1.0, 0.0]
    assert cp.compromised_cards == [1, 1]  # a is out of day 1, c remains
    keep = card_precision_at_k_daily(df, [0.9, 0.1, 0.9, 0.5, 0.4], k=1, remove_detected=False)
    assert keep.per_day == [1.0, 1.0]


def test_known_compromised_cards_are_left_out_of_their_day() -> None:
    df = frame([(0, "a", True), (0, "b", True), (1, "a", True)])
    cp = card_precision_at_k_daily(df, [0.9, 0.5, 0.9], k=1, known_compromised_before={D0: {"a"}})
    assert cp.per_day == [1.0, 1.0]  # day 0: b; day 1: a is no longer excluded
    assert cp.detected == [["b"], ["a"]]


def test_ties_broken_by_card_id() -> None:
    df = frame([(0, "b", False), (0, "a", True)])
    assert card_precision_at_k_daily(df, [0.5, 0.5], k=1).mean == 1.0


def test_oracle_is_the_ceiling() -> None:
    df = frame([(0, "a", True), (0, "b", False), (0, "c", True), (1, "d", False)])
    assert oracle_card_precision_at_k(df, k=2).per_day == [1.0, 0.0]
    assert oracle_card_precision_at_k(df, k=4).per_day == [0.5, 0.0]


def test_split_follows_get_train_test_set() -> None:
    rows = [(0, "t", True), (6, "u", False), (7, "x", True), (8, "y", True), (13, "z", True)]
    rows += [(14, c, False) for c in "tuxyzw"] + [(15, c, False) for c in "tuxyzw"]
    rows += [(20, c, False) for c in "tuxyzw"] + [(21, "t", False)]
    df = frame(rows)
    sp = handbook_split(df, "2018-07-25", 7, 7, 7)
    assert sp.test_days == tuple(range(D0 + 14, D0 + 21))
    assert sp.train.sum() == 2
    # test day 0 (D0+14): only training frauds are known; day 1 adds those of D0+7, day 6 of
    # D0+12; the fraud of D0+13 is never known within the test week
    assert sp.known[D0 + 14] == {"t"}
    assert sp.known[D0 + 15] == {"t", "x"}
    assert sp.known[D0 + 16] == {"t", "x", "y"}
    assert sp.known[D0 + 20] == {"t", "x", "y"}
    test = df[sp.test]
    assert sorted(test.loc[test["ts"] // DAY_MS == D0 + 14, "card_id"]) == list("uwxyz")
    assert sorted(test.loc[test["ts"] // DAY_MS == D0 + 15, "card_id"]) == list("uwyz")
    assert sorted(test.loc[test["ts"] // DAY_MS == D0 + 20, "card_id"]) == list("uwz")
    assert not (df["ts"] // DAY_MS == D0 + 21)[sp.test].any()
    assert known_compromised(df["card_id"], df["ts"], df["is_fraud"], D0, [D0 + 15], 7)[
        D0 + 15
    ] == {"t", "x"}


def test_handbook_metrics_keys() -> None:
    df = frame([(0, "a", True), (0, "b", False), (1, "c", False), (1, "d", True)])
    m = handbook_metrics(df, np.array([0.9, 0.1, 0.2, 0.8]), k=1)
    assert m["auc_roc"] == 1.0 and m["average_precision"] == 1.0
    assert m["card_precision_at_1"] == 1.0 and m["oracle_card_precision_at_1"] == 1.0
    assert (m["n_test"], m["n_test_frauds"], m["n_test_days"]) == (4, 2, 2)
    with pytest.raises(ValueError, match="length mismatch"):
        card_precision_at_k_daily(df, [0.1])


def test_revealed_frauds_need_a_known_label_of_the_terminal_run() -> None:
    from replay.metrics import revealed_frauds

    day = 86_400_000
    rows = [  # (merchant, day, is_fraud, pattern)
        ("m1", 0, False, ""),
        ("m1", 1, True, "compromised_terminal"),  # run starts on day 1
        ("m1", 5, True, "compromised_terminal"),  # 4 days in: nothing known yet
        ("m1", 8, True, "compromised_terminal"),  # 7 days in: day 1's label is known
        ("m1", 9, False, ""),  # the run ends
        ("m1", 10, True, "compromised_terminal"),  # a new run: unknown again
        ("m2", 8, True, "compromised_terminal"),  # another terminal, its own run
        ("m2", 3, True, "amount_over_220"),  # visible in the transaction itself
    ]
    df = pd.DataFrame(rows, columns=["merchant_id", "d", "is_fraud", "fraud_pattern"])
    df["ts"] = df["d"] * day
    got = revealed_frauds(df, 7 * day)
    assert got.tolist() == [False, False, False, True, False, False, False, True]
