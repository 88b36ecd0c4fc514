"""Stateless features of the transaction itself, computed from the batch's arrays (no Redis).

Windowed aggregates describe the card's and the merchant's history; a model also needs the
event's own amount and when it happened (the handbook's ``TX_AMOUNT``, ``TX_DURING_WEEKEND``,
``TX_DURING_NIGHT``). Times are UTC.

>>> import numpy as np
>>> transaction_features(np.array([1767225600000]), np.array([12.5])).tolist()
[[12.5, 0.0, 0.0, 1.0]]
"""

from __future__ import annotations

import numpy as np

from features._types import FloatArray, IntArray

TRANSACTION_FEATURE_NAMES = ("amount", "hour_of_day", "is_weekend", "is_night")
_DAY_MS = 86_400_000
_HOUR_MS = 3_600_000


def transaction_features(ts_ms: IntArray, amounts: FloatArray) -> FloatArray:
    """An (n, 4) matrix: amount, hour of day (0-23), weekend (Sat/Sun), night (00:00-06:00)."""
    ts = np.asarray(ts_ms, dtype=np.int64)
    hour = (ts % _DAY_MS) // _HOUR_MS
    weekday = (ts // _DAY_MS + 3) % 7  # 1970-01-01 was a Thursday: Monday = 0
    out = np.empty((len(ts), 4), dtype=np.float64)
    out[:, 0] = amounts
    out[:, 1] = hour
    out[:, 2] = weekday >= 5
    out[:, 3] = hour < 6
    return out
