"""Rule-evaluation benchmark: per-event cost of the default set and of a generated 100-rule set.

``measure()`` returns flat figures for ``.bench/results.json``; ``python -m rules.bench`` prints
them. Batches of 1000 realistic events (every field a payment system sends, features as the
feature store produces them) are evaluated with :meth:`RuleSet.evaluate_batch`; the figure is the
median over repeats, in microseconds per event. ``*_cel_us_per_event`` is the same set evaluated
per event by CEL, for comparison.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from rules.loader import load_rule_set
from rules.ruleset import RuleSet

DEFAULT_DIR = Path(__file__).resolve().parent
FEATURES = [
    "card_id_count_1h", "card_id_sum_1h", "card_id_mean_1h", "card_id_count_24h",
    "card_id_sum_24h", "card_id_mean_24h", "merchant_id_count_24h", "customer_id_count_24h",
    "card_id_zero_amount_count_1h",
]  # fmt: skip
COUNTRIES = ["FR", "DE", "ES", "IT", "GB", "US", "NL", "BE", "RU", "NG", "KP", "BR", "IN", "CN"]
CHANNELS = ["pos", "ecom", "app", "moto"]
MCCS = ["5411", "5732", "5812", "5999", "7995", "4829", "6051", "5967", "5311", "4111"]


def hundred_rules(seed: int = 1) -> str:
    """A realistic 100-rule YAML set: velocity, amounts, lists, channels, MCCs, combinations."""
    rng = random.Random(seed)
    lines = [
        "lists:",
        "  high_risk_countries: [KP, IR, SY, CU, RU, BY, VE, MM, NG]",
        "  risky_mccs: ['7995', '4829', '6051', '5967']",
        f"  blocked_cards: [{', '.join(f'card_{i:06d}' for i in range(0, 2000, 7))}]",
        "rules:",
    ]
    templates = [
        "f.card_id_count_1h >= {c} && txn.amount < {a}",
        "f.card_id_sum_1h > {s}",
        "f.card_id_sum_24h > {s} && f.card_id_mean_24h > {a}",
        "txn.amount > {big}",
        "has(txn.country) && txn.country in lists.high_risk_countries && txn.amount > {a}",
        "has(txn.mcc) && txn.mcc in lists.risky_mccs && f.card_id_count_24h > {c}",
        "txn.card_id in lists.blocked_cards",
        "txn.channel == '{ch}' && txn.amount > {big} && f.customer_id_count_24h < {c}",
        "f.merchant_id_count_24h > {m} && txn.amount / (f.card_id_mean_24h + 1.0) > {r}",
        "txn.country != 'FR' && txn.channel in ['ecom', 'app'] && f.card_id_count_1h > {c}",
        "(txn.amount > {big} || f.card_id_sum_1h > {s}) && !(txn.country in ['FR', 'DE'])",
        "txn.mcc.startsWith('59') && f.card_id_mean_1h < {a} && f.card_id_count_1h >= {c}",
        "f.card_id_count_24h >= {c} ? f.card_id_mean_24h < {a} : txn.amount > {big}",
    ]
    for i in range(100):
        cond = templates[i % len(templates)].format(
            c=rng.randint(3, 30),
            a=rng.choice([5, 10, 20, 50]),
            s=rng.choice([2000, 5000, 10000, 20000]),
            big=rng.choice([1000, 2500, 5000, 9000]),
            ch=rng.choice(CHANNELS),
            m=rng.choice([200, 500, 1000]),
            r=rng.choice([5.0, 10.0, 20.0]),
        )
        action = rng.choice(["review", "review", "tag", "block"])
        lines += [
            f"  - id: gen_{i:03d}",
            f'    condition: "{cond}"',
            f"    action: {action}",
            f"    reason: gen_{i:03d}",
            f"    priority: {i}",
        ]
    return "\n".join(lines) + "\n"


def events_batch(
    n: int = 1000, seed: int = 3
) -> tuple[list[dict[str, Any]], npt.NDArray[np.float64]]:
    """Events shaped like validated transactions, and a plausible feature matrix."""
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    for i in range(n):
        e: dict[str, Any] = {
            "event_id": f"tx_{i:09d}",
            "ts": 1_767_225_600_000 + i * 997,
            "card_id": f"card_{rng.randrange(2000):06d}",
            "customer_id": f"cust_{rng.randrange(2000):06d}",
            "merchant_id": f"merch_{rng.randrange(500):05d}",
            "amount": round(rng.lognormvariate(3.5, 1.3), 2),
            "currency": "EUR",
            "channel": rng.choice(CHANNELS),
            "device_id": f"dev_{rng.randrange(5000):07d}",
            "ip": f"90.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}",
            "mcc": rng.choice(MCCS),
        }
        if rng.random() < 0.95:
            e["country"] = rng.choice(COUNTRIES)
        events.append(e)
    g = np.random.default_rng(seed)
    count_1h = g.poisson(1.5, n).astype(np.float64) + 1
    count_24h = count_1h + g.poisson(4, n)
    mean = g.lognormal(3.5, 1.0, n)
    x = np.column_stack(
        [
            count_1h,
            count_1h * mean,
            mean,
            count_24h,
            count_24h * mean,
            mean,
            g.poisson(300, n).astype(np.float64),
            count_24h,
            g.poisson(0.05, n).astype(np.float64),  # zero-amount authorisations: rare
        ]
    )
    return events, x


def _per_event_us(rs: RuleSet, events: list[dict[str, Any]], x: Any, cel: bool = False) -> float:
    run = rs.evaluate_batch_cel if cel else rs.evaluate_batch
    run(events, x, FEATURES)
    times = []
    for _ in range(3 if cel else 15):
        t0 = time.perf_counter()
        run(events, x, FEATURES)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / len(events) * 1e6


def measure(batch: int = 1000, with_cel: bool = True) -> dict[str, float]:
    """``rules_default_us_per_event`` and ``rules_100_us_per_event`` (and the CEL baselines)."""
    events, x = events_batch(batch)
    default = load_rule_set(DEFAULT_DIR, FEATURES)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "rules.yaml").write_text(hundred_rules())
        hundred = load_rule_set(d, FEATURES)
    out = {
        "rules_default_us_per_event": round(_per_event_us(default, events, x), 2),
        "rules_100_us_per_event": round(_per_event_us(hundred, events, x), 2),
        "rules_100_per_event_cel_rules": float(len(hundred.per_event_rules)),
    }
    if with_cel:
        out["rules_default_cel_us_per_event"] = round(_per_event_us(default, events, x, True), 2)
        out["rules_100_cel_us_per_event"] = round(_per_event_us(hundred, events, x, True), 2)
    return out


if __name__ == "__main__":  # pragma: no cover
    for k, v in measure().items():
        print(f"{k:36s} {v:10.2f}")
