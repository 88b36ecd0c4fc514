"""The transaction simulator of the *Fraud Detection Handbook* (Le Borgne et al., chapter 3).

"Reproducible Machine Learning for Credit Card Fraud Detection — Practical Handbook",
chapter 3 "Transaction data simulator", re-implemented with numpy (vectorised, deterministic per
seed) and mapped to riskstream's transaction fields.

The world, as published:

* customers: a position (x, y) uniform on a 100 × 100 grid, ``mean_amount`` uniform in 5..100,
  ``std_amount = mean_amount / 2``, ``mean_nb_tx_per_day`` uniform in 0..4;
* terminals: a position (x, y) uniform on the same grid; a customer can only use the terminals
  strictly closer than ``radius`` (customers without any terminal never transact);
* every day, a customer makes ``Poisson(mean_nb_tx_per_day)`` transactions; each one has a time of
  day ``int(Normal(43200, 20000))`` seconds and is *discarded* unless ``0 < t < 86400``; an amount
  ``Normal(mean_amount, std_amount)`` (a negative draw is replaced by ``Uniform(0, 2·mean)``),
  rounded to cents; a terminal drawn uniformly among the customer's available ones;
* fraud, applied in this order (a later scenario overrides an earlier one's pattern):

  1. ``amount_over_220``: every transaction with an amount above 220;
  2. ``compromised_terminal``: for every day ``d`` but the last, 2 terminals are drawn (without
     replacement); all their transactions on days ``d .. d+27`` are fraud;
  3. ``compromised_card``: for every day ``d`` but the last, 3 customers are drawn; of their
     transactions on days ``d .. d+13`` (fraudulent or not), ``int(n / 3)`` drawn without
     replacement have their amount multiplied by 5 and are fraud (a transaction drawn on two
     days is multiplied twice, as in the handbook's code).

Differences from the handbook's code, none of which changes the distributions: the random draws
come from one :class:`numpy.random.Generator` seeded with ``seed`` (the handbook seeds its
customers, terminals and scenario days separately with fixed seeds, so its world is one fixed
sample; here every seed is a new world), and an amount that rounds to 0.00 (the handbook keeps
those; riskstream refuses amounts <= 0 as invalid) is set to 0.01 — about a hundred of 1.8 M.

Mapping to riskstream: ``card_id`` and ``customer_id`` are the customer (``C00042``),
``merchant_id`` the terminal (``T00042``), ``ts`` epoch milliseconds (the handbook's second
resolution, UTC, from ``start`` at midnight), ``event_id`` ``hb<seed>_<row>``, constant
``currency`` (EUR) and ``channel`` (pos); ``is_fraud`` and ``fraud_pattern`` ("" when legit) are
the labels. Rows are sorted by ``ts`` (stable: ties keep customer, day, draw order).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

#: ``fraud_pattern`` values, by scenario number (1, 2, 3).
HANDBOOK_PATTERNS = ("amount_over_220", "compromised_terminal", "compromised_card")
HANDBOOK_START = "2018-04-01"
COLUMNS = (
    "event_id", "ts", "card_id", "customer_id", "merchant_id", "amount", "currency", "channel",
    "is_fraud", "fraud_pattern",
)  # fmt: skip
PROFILES = ("default", "handbook")

_DAY_S = 86_400
_TERMINAL_DAYS = 28
_CARD_DAYS = 14
_CHUNK = 256  # customers per block of the customer × terminal distance matrix


def _available_terminals(
    cust_xy: FloatArray, term_xy: FloatArray, radius: float
) -> tuple[IntArray, IntArray]:
    """CSR (indptr, terminal indices) of the terminals strictly within ``radius`` of each customer.

    Terminals of a customer are in increasing index order, like the handbook's ``np.where``.
    """
    indptr = np.zeros(len(cust_xy) + 1, dtype=np.int64)
    parts: list[IntArray] = []
    tx, ty = term_xy[:, 0], term_xy[:, 1]
    for start in range(0, len(cust_xy), _CHUNK):
        block = cust_xy[start : start + _CHUNK]
        d2 = (block[:, :1] - tx[None, :]) ** 2 + (block[:, 1:] - ty[None, :]) ** 2
        # the handbook keeps terminals whose Euclidean distance is strictly below r
        rows, cols = np.nonzero(np.sqrt(d2) < radius)
        counts = np.bincount(rows, minlength=len(block))
        indptr[start + 1 : start + 1 + len(block)] = counts
        parts.append(cols.astype(np.int64))
    np.cumsum(indptr, out=indptr)
    indices = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return indptr, indices


def _names(prefix: str, codes: IntArray, width: int) -> npt.NDArray[np.object_]:
    uniq, inverse = np.unique(codes, return_inverse=True)
    labels = np.array([f"{prefix}{c:0{width}d}" for c in uniq.tolist()], dtype=object)
    out: npt.NDArray[np.object_] = labels[inverse]
    return out


def simulate_handbook(
    seed: int,
    n_customers: int = 5000,
    n_terminals: int = 10000,
    nb_days: int = 183,
    start: str = HANDBOOK_START,
    radius: float = 5,
) -> pd.DataFrame:
    """The handbook's labelled transactions (see the module docstring), sorted by ``ts``.

    >>> df = simulate_handbook(0, n_customers=50, n_terminals=100, nb_days=10)
    >>> list(df.columns) == list(COLUMNS), bool(df["ts"].is_monotonic_increasing)
    (True, True)
    >>> bool((df["amount"] > 0).all())
    True
    """
    if n_customers < 1 or n_terminals < 1 or nb_days < 1:
        msg = "n_customers, n_terminals and nb_days must be >= 1"
        raise ValueError(msg)
    rng = np.random.default_rng(seed)
    # -- profiles
    cust_xy = rng.uniform(0.0, 100.0, (n_customers, 2))
    mean_amount = rng.uniform(5.0, 100.0, n_customers)
    std_amount = mean_amount / 2.0
    mean_nb_tx = rng.uniform(0.0, 4.0, n_customers)
    term_xy = rng.uniform(0.0, 100.0, (n_terminals, 2))
    indptr, indices = _available_terminals(cust_xy, term_xy, float(radius))
    nb_terms = np.diff(indptr)

    # -- transactions, in (customer, day, draw) order
    counts = rng.poisson(np.repeat(mean_nb_tx, nb_days)).astype(np.int64)  # cell = c*nb_days + d
    cell = np.repeat(np.arange(n_customers * nb_days, dtype=np.int64), counts)
    cust, day = cell // nb_days, cell % nb_days
    n = len(cell)
    secs = rng.normal(_DAY_S / 2, 20000.0, n).astype(np.int64)  # int() truncates toward zero
    amount = rng.normal(mean_amount[cust], std_amount[cust])
    negative = amount < 0
    amount[negative] = rng.uniform(0.0, 2.0 * mean_amount[cust[negative]])
    amount = np.round(amount, 2)
    pick = rng.random(n)
    keep = (secs > 0) & (secs < _DAY_S) & (nb_terms[cust] > 0)
    cust, day, secs, amount, pick = cust[keep], day[keep], secs[keep], amount[keep], pick[keep]
    offset = np.minimum((pick * nb_terms[cust]).astype(np.int64), nb_terms[cust] - 1)
    term = indices[indptr[cust] + offset]
    n = len(cust)

    # -- fraud scenarios
    pattern = np.zeros(n, dtype=np.int64)
    pattern[amount > 220] = 1
    last_day = int(day.max()) if n else 0
    compromised = np.zeros((n_terminals, nb_days + _TERMINAL_DAYS), dtype=np.int32)
    for d in range(last_day):
        for t in rng.choice(n_terminals, size=min(2, n_terminals), replace=False):
            compromised[t, d] += 1
            compromised[t, d + _TERMINAL_DAYS] -= 1
    active = np.cumsum(compromised, axis=1)[:, :nb_days] > 0
    pattern[active[term, day]] = 2
    # transactions are in (customer, day) order: a customer's days d..d+13 are one slice
    key = cust * nb_days + day
    for d in range(last_day):
        victims = rng.choice(n_customers, size=min(3, n_customers), replace=False)
        lo = np.searchsorted(key, victims * nb_days + d, side="left")
        hi = np.searchsorted(key, victims * nb_days + min(d + _CARD_DAYS, nb_days), side="left")
        pool = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi, strict=True)])
        chosen = rng.choice(pool, size=len(pool) // 3, replace=False) if len(pool) else pool
        amount[chosen] *= 5.0
        pattern[chosen] = 3
    amount = np.maximum(np.round(amount, 2), 0.01)

    # -- riskstream records, in event-time order
    order = np.argsort(day * _DAY_S + secs, kind="stable")
    start_ms = int(pd.Timestamp(start, tz="UTC").value // 1_000_000)
    ts = start_ms + (day[order] * _DAY_S + secs[order]) * 1000
    width = max(7, len(str(n)))
    customers = _names("C", cust[order], max(5, len(str(n_customers - 1))))
    pattern = pattern[order]
    frame: dict[str, Any] = {
        "event_id": np.array([f"hb{seed}_{i:0{width}d}" for i in range(n)], dtype=object),
        "ts": ts.astype(np.int64),
        "card_id": customers,
        "customer_id": customers.copy(),
        "merchant_id": _names("T", term[order], max(5, len(str(n_terminals - 1)))),
        "amount": amount[order].astype(np.float64),
        "currency": np.full(n, "EUR", dtype=object),
        "channel": np.full(n, "pos", dtype=object),
        "is_fraud": pattern > 0,
        "fraud_pattern": np.array(("", *HANDBOOK_PATTERNS), dtype=object)[pattern],
    }
    return pd.DataFrame(frame, columns=list(COLUMNS))


def simulate_profile(
    profile: str,
    days: int | None = None,
    seed: int = 0,
    start: str | None = None,
    n_customers: int | None = None,
    n_merchants: int | None = None,
    **kwargs: Any,
) -> pd.DataFrame:
    """A simulated file by profile; ``None`` arguments take the profile's own defaults.

    ``default``: :func:`replay.simulate.simulate` (30 days from 2026-01-01, 5,000 customers,
    1,000 merchants). ``handbook``: :func:`simulate_handbook` (183 days from 2018-04-01, 5,000
    customers, 10,000 terminals = merchants, radius 5; ``radius`` may be passed in ``kwargs``).
    """
    if profile == "handbook":
        return simulate_handbook(
            seed,
            n_customers=5000 if n_customers is None else n_customers,
            n_terminals=10000 if n_merchants is None else n_merchants,
            nb_days=183 if days is None else days,
            start=HANDBOOK_START if start is None else start,
            **kwargs,
        )
    if profile == "default":
        from replay.simulate import simulate

        return simulate(
            days=30 if days is None else days,
            seed=seed,
            start="2026-01-01" if start is None else start,
            n_customers=5000 if n_customers is None else n_customers,
            n_merchants=1000 if n_merchants is None else n_merchants,
            **kwargs,
        )
    msg = f"unknown simulation profile {profile!r} (choose from {', '.join(PROFILES)})"
    raise ValueError(msg)


def scenario_counts(df: pd.DataFrame) -> dict[str, int]:
    """Frauds per ``fraud_pattern`` (legit rows excluded)."""
    frauds = df.loc[df["is_fraud"].to_numpy(dtype=bool), "fraud_pattern"]
    return {str(k): int(v) for k, v in frauds.value_counts().sort_index().items()}
