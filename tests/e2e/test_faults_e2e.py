"""The fault suite in its CI form (``riskstream faults --reduced``: one SIGKILL, a poison, a slow
Redis, a memory-only Valkey restart with ``rebuild-features``), and a small fuzz run.

Each scenario runs real worker processes against a real Tansu and Valkey and checks, event by
event, that every input has exactly one decision (or identical copies) or one dead letter and
that every logged feature vector equals the offline reference (see :mod:`replay.faults`). The
full suite (three SIGKILLs, Valkey restarts with and without persistence, a 30 s broker outage)
is ``make faults``; the 1,000,000-message fuzz run is ``make fuzz``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from replay.faults import run_suite
from replay.fuzz import run_fuzz

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]


def test_reduced_fault_suite(tmp_path: Path) -> None:
    results = run_suite(tmp_path, reduced=True, log=lambda _m: None)
    names = ["worker_sigkill", "poison", "poison_after_features", "slow_redis",
             "redis_restart_memory"]  # fmt: skip
    assert [r.scenario for r in results] == names
    for r in results:
        assert r.decisions + r.dead_letters == r.events_in, r.row()
        assert r.lost == 0 and r.both == 0 and r.differing == 0, r.row()
        assert r.features_checked == r.decisions, r.row()
    kill, poison, after, slow, memory = results
    assert all(r.ok for r in results), [r.row() for r in results]
    # a kill between the feature update and the decision memo: the redelivered batch is scored
    # with its first delivery's windows (features.kernels), so every event equals the reference
    assert kill.features_mismatched == 0, kill.row()
    assert kill.recovery_seconds and all(s < 120 for s in kill.recovery_seconds)
    # the poisons alone: every 250th event from the 125th (replay.faults), so the later ones
    # arrive in the backlog the first one's retries build
    for p in (poison, after):
        assert p.dead_letters == len(range(125, p.events_in, 250)), p.row()
        assert p.dead_innocent == 0, p.row()
    # a 2 s CLIENT PAUSE while decisions flow: the worker's latency histogram (what the latency
    # alert reads) shows decisions slower than 1 s, the slowest waited about the pause, and
    # decisions are within the 250 ms objective again soon after the pause ended
    assert slow.latency_over_1s > 0 and slow.latency_over_objective >= slow.latency_over_1s
    assert slow.max_latency_seconds > 1.0, slow.row()
    assert len(slow.recovery_seconds) == 1 and slow.recovery_seconds[0] < 30, slow.row()
    # Valkey lost everything: rebuild-features restored the committed transactions (read from
    # the batch consumer's group), so the decisions after the restart see their history
    rebuilt = int(memory.notes.split("rebuilt ")[1].split(" ")[0])
    assert rebuilt > 0 and memory.features_mismatched == 0, memory.row()


def test_small_fuzz_run(tmp_path: Path) -> None:
    res = run_fuzz(20_000, tmp_path, seed=1, log=lambda _m: None)
    assert res.ok, res
    assert res.decisions + res.dead_letters == res.messages
    assert res.crashes == 0 and res.pan_leaks == 0 and res.unaccounted == 0
    assert res.dead_reasons.get("card_number_detected", 0) > 1000
