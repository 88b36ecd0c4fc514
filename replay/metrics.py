"""The Fraud Detection Handbook's evaluation protocol (Le Borgne et al., chapters 3-5).

Days are UTC calendar days of event time (``ts // 86_400_000``); the handbook counts days from
the simulation start, which is midnight, so both are the same days.

Protocol (the handbook's ``get_train_test_set``): train on ``delta_train`` days from
``train_start``, wait ``delta_delay`` days, test on the next ``delta_test`` days. Frauds become
known with a delay: on test day ``j`` (0-based) the cards known to be compromised are those with a
fraud in the training period or on days ``train_end - 1 .. train_end + j - 1`` (``train_end`` =
first day after training), i.e. frauds of day ``t`` are known on day ``t + delta_delay + 1``; their
transactions are removed from that test day.

Card precision@k (``card_precision_top_k``): per test day, each card is scored by its highest
transaction score of the day and is fraudulent if any of its transactions that day is; the ``k``
best-scored cards are the alerts, precision = fraudulent alerts / ``k`` (always over ``k``, also on
a day with fewer cards). A card detected (alerted and fraudulent) is removed from the later test
days. The result is the mean over test days. Score ties are broken by card id (the handbook's
pandas sort leaves them unspecified), so the value is deterministic.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

DAY_MS = 86_400_000
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]

#: The handbook's protocol week: training from 2018-07-25, 7 + 7 + 7 days.
HANDBOOK_TRAIN_START = "2018-07-25"
#: Published baselines on the handbook's data (chapter 5, test week above).
HANDBOOK_BASELINES = {
    "average_precision": {"random_forest": 0.658},
    "card_precision_at_100": {"logistic_regression": 0.291},
}


def day_of(ts_ms: Sequence[int] | npt.NDArray[Any] | pd.Series) -> IntArray:
    """UTC day numbers (days since 1970-01-01) of epoch-millisecond timestamps."""
    out: IntArray = np.asarray(ts_ms, dtype=np.int64) // DAY_MS
    return out


def to_day(when: str | int | pd.Timestamp) -> int:
    """The UTC day number of a date (``"2018-07-25"``), a timestamp or epoch milliseconds."""
    if isinstance(when, int | np.integer):
        return int(when) // DAY_MS
    stamp = pd.Timestamp(when)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return int(stamp.value // 1_000_000) // DAY_MS


@dataclass(frozen=True)
class HandbookSplit:
    """Row masks of the training period and of the test days (known compromised cards removed)."""

    train: BoolArray
    test: BoolArray
    train_days: tuple[int, ...]
    delay_days: tuple[int, ...]
    test_days: tuple[int, ...]
    #: test day → cards known compromised that day (their transactions are not in ``test``)
    known: dict[int, frozenset[str]] = field(repr=False)

    @property
    def train_start_ms(self) -> int:
        return self.train_days[0] * DAY_MS

    @property
    def test_start_ms(self) -> int:
        return self.test_days[0] * DAY_MS

    @property
    def test_end_ms(self) -> int:
        """Exclusive end of the test period."""
        return (self.test_days[-1] + 1) * DAY_MS


def known_compromised(
    card_ids: Sequence[str] | npt.NDArray[Any] | pd.Series,
    ts_ms: Sequence[int] | npt.NDArray[Any] | pd.Series,
    is_fraud: Sequence[bool] | npt.NDArray[Any] | pd.Series,
    first_day: int,
    test_days: Sequence[int],
    delay_days: int,
) -> dict[int, frozenset[str]]:
    """Per test day ``d``: cards with a fraud on days ``first_day .. d - delay_days - 1``."""
    fraud = np.asarray(is_fraud, dtype=bool)
    cards = np.asarray(card_ids, dtype=object)[fraud]
    days = day_of(ts_ms)[fraud]
    out: dict[int, frozenset[str]] = {}
    for d in test_days:
        sel = (days >= first_day) & (days <= d - delay_days - 1)
        out[int(d)] = frozenset(str(c) for c in np.unique(cards[sel]))
    return out


def handbook_split(
    df: pd.DataFrame,
    train_start: str | int | pd.Timestamp = HANDBOOK_TRAIN_START,
    delta_train: int = 7,
    delta_delay: int = 7,
    delta_test: int = 7,
) -> HandbookSplit:
    """The handbook's ``get_train_test_set`` on a frame with ``card_id``, ``ts``, ``is_fraud``."""
    if min(delta_train, delta_test) < 1 or delta_delay < 0:
        msg = "delta_train and delta_test must be >= 1, delta_delay >= 0"
        raise ValueError(msg)
    first = to_day(train_start)
    days = day_of(df["ts"])
    train_days = tuple(range(first, first + delta_train))
    delay = tuple(range(first + delta_train, first + delta_train + delta_delay))
    start_test = first + delta_train + delta_delay
    test_days = tuple(range(start_test, start_test + delta_test))
    known = known_compromised(
        df["card_id"], df["ts"], df["is_fraud"], first, test_days, delta_delay
    )
    cards = df["card_id"].to_numpy(dtype=object)
    test = np.zeros(len(df), dtype=bool)
    for d in test_days:
        on_day = days == d
        if known[d]:
            on_day &= ~pd.Series(cards).isin(known[d]).to_numpy()
        test |= on_day
    train = (days >= first) & (days < first + delta_train)
    return HandbookSplit(train, test, train_days, delay, test_days, known)


@dataclass(frozen=True)
class CardPrecision:
    """Card precision@k per test day and its mean."""

    k: int
    mean: float
    days: list[int]
    per_day: list[float]
    #: compromised cards still in the running that day (the handbook's upper bound × k)
    compromised_cards: list[int]
    detected: list[list[str]] = field(repr=False)


def card_precision_at_k_daily(
    df_test: pd.DataFrame,
    scores: Sequence[float] | npt.NDArray[Any] | pd.Series,
    k: int = 100,
    known_compromised_before: Mapping[int, Collection[str]] | None = None,
    remove_detected: bool = True,
) -> CardPrecision:
    """Mean daily card precision@k of ``scores`` (row-aligned with ``df_test``).

    ``df_test`` needs ``card_id``, ``ts`` (epoch ms) and ``is_fraud``. ``known_compromised_before``
    maps a day number (:func:`day_of`) to the cards known compromised then, which are left out of
    that day (pass :attr:`HandbookSplit.known`, or ``None`` when ``df_test`` is already filtered).
    Cards detected on a day are left out of the later days when ``remove_detected``.
    """
    if k <= 0:
        msg = f"k must be positive, got {k}"
        raise ValueError(msg)
    s = np.asarray(scores, dtype=np.float64)
    if len(s) != len(df_test):
        msg = f"length mismatch: {len(df_test)} rows, {len(s)} scores"
        raise ValueError(msg)
    cards = df_test["card_id"].astype(str).to_numpy(dtype=object)
    fraud = df_test["is_fraud"].to_numpy(dtype=bool)
    days = day_of(df_test["ts"])
    detected_so_far: set[str] = set()
    out_days: list[int] = []
    per_day: list[float] = []
    bound: list[int] = []
    detected: list[list[str]] = []
    for d in np.unique(days).tolist():
        excluded = set(known_compromised_before.get(d, ())) if known_compromised_before else set()
        excluded |= detected_so_far
        sel = days == d
        if excluded:
            sel &= ~pd.Series(cards).isin(excluded).to_numpy()
        uniq, inverse = np.unique(cards[sel], return_inverse=True)
        card_score = np.full(len(uniq), -np.inf)
        np.maximum.at(card_score, inverse, s[sel])
        card_fraud = np.zeros(len(uniq), dtype=bool)
        np.logical_or.at(card_fraud, inverse, fraud[sel])
        top = np.argsort(-card_score, kind="stable")[:k]  # ties: card id order (uniq is sorted)
        hits = [str(c) for c in uniq[top][card_fraud[top]]]
        out_days.append(int(d))
        per_day.append(len(hits) / k)
        bound.append(int(card_fraud.sum()))
        detected.append(hits)
        if remove_detected:
            detected_so_far.update(hits)
    mean = float(np.mean(per_day)) if per_day else float("nan")
    return CardPrecision(k, mean, out_days, per_day, bound, detected)


def oracle_card_precision_at_k(
    df_test: pd.DataFrame,
    k: int = 100,
    known_compromised_before: Mapping[int, Collection[str]] | None = None,
) -> CardPrecision:
    """Card precision@k of a perfect scorer (scores = labels): the protocol's ceiling."""
    labels = df_test["is_fraud"].to_numpy(dtype=np.float64)
    return card_precision_at_k_daily(df_test, labels, k, known_compromised_before)


def handbook_metrics(
    df_test: pd.DataFrame,
    scores: Sequence[float] | npt.NDArray[Any] | pd.Series,
    k: int = 100,
    known_compromised_before: Mapping[int, Collection[str]] | None = None,
) -> dict[str, Any]:
    """AUC ROC, average precision and card precision@k (with the oracle's) on the test rows.

    As in the handbook's ``performance_assessment``, AUC and AP are over the transactions of
    ``df_test`` (give it the test rows with known compromised cards already removed).
    """
    s = np.asarray(scores, dtype=np.float64)
    y = df_test["is_fraud"].to_numpy(dtype=bool)
    both = bool(y.any() and not y.all())
    cp = card_precision_at_k_daily(df_test, s, k, known_compromised_before)
    oracle = oracle_card_precision_at_k(df_test, k, known_compromised_before)
    return {
        "auc_roc": float(roc_auc_score(y, s)) if both else float("nan"),
        "average_precision": float(average_precision_score(y, s)) if both else float("nan"),
        f"card_precision_at_{k}": cp.mean,
        f"oracle_card_precision_at_{k}": oracle.mean,
        f"card_precision_at_{k}_per_day": cp.per_day,
        "compromised_cards_per_day": oracle.compromised_cards,
        "n_test": len(y),
        "n_test_frauds": int(y.sum()),
        "n_test_days": len(cp.days),
    }


TERMINAL_PATTERN = "compromised_terminal"


def revealed_frauds(history: pd.DataFrame, delay_ms: int) -> npt.NDArray[np.bool_]:
    """Per row of ``history``: is it a fraud that what was known when it happened could reveal?

    Frauds of the amount and compromised-card scenarios show in the transaction and its card's
    history (counted as revealed: a generous bound). A compromised-terminal fraud is revealed
    only when its terminal's current run of such frauds began at least ``delay_ms`` earlier, so
    that a label of the run was known; earlier in the run it looks exactly like a legitimate
    payment (the terminal is chosen at random, amounts are unchanged), and no scorer can rank it
    above one. ``history`` needs ``merchant_id``, ``ts``, ``is_fraud`` and ``fraud_pattern``.
    """
    fraud = history["is_fraud"].to_numpy(dtype=bool)
    pattern = history["fraud_pattern"].astype(str).to_numpy(dtype=object)
    term = fraud & (pattern == TERMINAL_PATTERN)
    codes = pd.factorize(history["merchant_id"])[0]
    ts = history["ts"].to_numpy(dtype=np.int64)
    out: npt.NDArray[np.bool_] = fraud & ~term
    if not term.any():
        return out
    order = np.lexsort((ts, codes))  # by terminal, then time
    m, t, tm = codes[order], ts[order], term[order]
    new_merchant = np.r_[True, m[1:] != m[:-1]]
    starts = tm & (new_merchant | ~np.r_[False, tm[:-1]])  # first fraud of each run
    run_start = t[np.maximum.accumulate(np.where(starts, np.arange(len(t)), 0))]
    out[order] |= tm & (run_start <= t - delay_ms)
    return out


def revealed_ceiling(
    df_test: pd.DataFrame,
    scores: Sequence[float] | npt.NDArray[Any] | pd.Series,
    revealed: npt.NDArray[np.bool_],
    k: int = 100,
) -> float:
    """Card precision@k of ``scores`` with every revealed fraud (:func:`revealed_frauds`, aligned
    with ``df_test``) moved to the top: what a better model could reach with the same ranking of
    everything else."""
    s = np.asarray(scores, dtype=np.float64)
    lifted = np.where(revealed, 2.0 + s, s)  # scores are probabilities: revealed rows rank first
    return card_precision_at_k_daily(df_test, lifted, k).mean
