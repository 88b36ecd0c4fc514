"""The event ids a replay has decided, so that a file's repeated id is decided once.

The feature store recognises an event it counted already per (event id, event-time day): that is
what a Kafka redelivery looks like (the same bytes, the same ``ts``), and it lets a day's ids
expire with the day. A file can repeat an id on *another* day (an export joined twice, a row
re-stamped); ``replay`` must dead-letter that copy too, as ``train`` and ``backtest`` do, so it
keeps every id it decided — as 64-bit hashes in a few sorted arrays (8 bytes an id: 240 MB for
30 million transactions, where a set of strings would take several GB).

Two different ids share a hash with a probability of about n²/2⁶⁵ (3·10⁻⁸ for a million ids).

>>> seen = SeenIds()
>>> seen.add(["t1", "t2"])
>>> seen.contains(["t2", "t3"]).tolist()
[True, False]
>>> len(seen)
2
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from features.hashing import hash64

U64 = np.ndarray[Any, np.dtype[np.uint64]]
Mask = np.ndarray[Any, np.dtype[np.bool_]]


def id_hashes(ids: Sequence[object]) -> U64:
    """A 64-bit hash per id: the feature store's (:func:`features.hashing.hash64`, stable
    across runs); an id that is not text is hashed as its ``str``."""
    vals: list[Any] = ids if isinstance(ids, list) else list(ids)
    try:
        return hash64(vals)  # all strings: the common case, no copy
    except TypeError:
        return hash64([str(i) for i in vals])


class SeenIds:
    """A set of event ids; blocks of sorted hashes, merged so that there are O(log n) of them."""

    def __init__(self) -> None:
        self._blocks: list[U64] = []
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, ids: Sequence[object]) -> None:
        self.add_hashes(id_hashes(ids))

    def add_hashes(self, hashes: U64) -> None:
        """Add ids by their :func:`id_hashes` (a resumed replay reads back the ones it kept)."""
        hashes = np.unique(hashes)  # sorted, distinct within the batch
        if len(hashes):
            hashes = hashes[~self._contains_hashes(hashes)]
        if not len(hashes):
            return
        self._blocks.append(hashes)
        self._size += len(hashes)
        # keep sizes at least halving from block to block: few blocks, amortised linear merges
        # (the blocks are disjoint: a sort of the two sorted runs, radix for integers)
        while len(self._blocks) > 1 and len(self._blocks[-2]) <= 2 * len(self._blocks[-1]):
            last = self._blocks.pop()
            self._blocks[-1] = np.sort(np.concatenate((self._blocks[-1], last)), kind="stable")

    def contains(self, ids: Sequence[object]) -> Mask:
        """For each id, whether it was added before."""
        return self._contains_hashes(id_hashes(ids))

    def _contains_hashes(self, hashes: U64) -> Mask:
        found = np.zeros(len(hashes), dtype=bool)
        for block in self._blocks:
            at = np.searchsorted(block, hashes)
            hit = at < len(block)
            hit[hit] = block[at[hit]] == hashes[hit]
            found |= hit
        return found
