"""What the rule tests share: the default rule directory and the foundation's feature names."""

from __future__ import annotations

from pathlib import Path

RULES_DIR = Path(__file__).resolve().parents[1] / "rules"
FEATURES = [
    "card_id_count_1h",
    "card_id_sum_1h",
    "card_id_mean_1h",
    "card_id_count_24h",
    "card_id_sum_24h",
    "card_id_mean_24h",
    "merchant_id_count_24h",
    "customer_id_count_24h",
    "card_id_zero_amount_count_1h",
]
