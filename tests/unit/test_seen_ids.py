"""``replay.seen_ids``: a set of event ids, by law (membership equals a Python set's)."""

from __future__ import annotations

import doctest

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from replay import seen_ids
from replay.seen_ids import SeenIds

ids = st.text(min_size=0, max_size=12)


def test_doctests() -> None:
    result = doctest.testmod(seen_ids)
    assert result.attempted > 0 and result.failed == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(ids, max_size=40), max_size=30), st.lists(ids, max_size=60))
def test_membership_equals_a_set(batches: list[list[str]], probes: list[str]) -> None:
    seen, model = SeenIds(), set()
    for batch in batches:
        got = seen.contains(batch).tolist()
        assert got == [x in model for x in batch]
        seen.add(batch)
        model.update(batch)
        assert len(seen) == len(model)
    assert seen.contains(probes).tolist() == [x in model for x in probes]


def test_blocks_stay_few_and_sorted() -> None:
    seen = SeenIds()
    for k in range(1000):
        seen.add([f"e{k}_{i}" for i in range(7)])
    assert len(seen) == 7000
    blocks = seen._blocks
    assert len(blocks) <= 2 * int(np.log2(7000)) + 1
    assert all((b[1:] > b[:-1]).all() for b in blocks)
    assert seen.contains(["e999_6", "e0_0", "e1000_0"]).tolist() == [True, True, False]
