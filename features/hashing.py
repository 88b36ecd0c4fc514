"""Stable 64-bit hashes of entity values: a value's bucket and its id in stored records.

FNV-1a over the UTF-8 bytes, compiled: the same in every process and release (Python's ``hash``
is salted per process), and fast on a batch of strings.

>>> int(hash64(["card_1"])[0]) == int(hash64(["card_1", "x"])[0])
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from numba import njit

from features._types import FloatArray, IntArray

_MASK52 = (1 << 52) - 1
#: 64-bit hashes, one per value.
HashArray = npt.NDArray[np.uint64]


def hash64(values: Sequence[str]) -> HashArray:
    """The 64-bit FNV-1a hash of each string (uint64)."""
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    text = "".join(values)
    if text.isascii():
        data = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
        lens = np.fromiter(map(len, values), dtype=np.int64, count=n)
    else:
        parts = [v.encode("utf-8") for v in values]
        data = np.frombuffer(b"".join(parts), dtype=np.uint8)
        lens = np.fromiter(map(len, parts), dtype=np.int64, count=n)
    off = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lens, out=off[1:])
    return _fnv1a(data, off)


def combine(parts: list[HashArray]) -> HashArray:
    """One 64-bit hash per row from several (a pair of entity values), order-sensitive."""
    out = parts[0].astype(np.uint64)
    for h in parts[1:]:
        out = _mix(out * np.uint64(0x9E3779B97F4A7C15) ^ h.astype(np.uint64))
    return out


def _mix(x: HashArray) -> HashArray:
    """splitmix64's finaliser: every input bit moves every output bit."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    out: HashArray = x ^ (x >> np.uint64(31))
    return out


def low52(hashes: HashArray) -> FloatArray:
    """The low 52 bits of each hash, exact as float64 (for distinct counts in records)."""
    out: FloatArray = (hashes & np.uint64(_MASK52)).astype(np.float64)
    return out


@njit(cache=True)
def _fnv1a(data: Any, off: IntArray) -> HashArray:  # pragma: no cover - compiled
    n = off.shape[0] - 1
    out = np.empty(n, dtype=np.uint64)
    prime = np.uint64(1099511628211)
    for i in range(n):
        h = np.uint64(14695981039346656037)
        for j in range(off[i], off[i + 1]):
            h = (h ^ np.uint64(data[j])) * prime
        out[i] = h
    return out
