"""replay.proc: CPU seconds of processes (by pid or command line) and resident memory."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import uuid

import pytest

from replay.proc import cpu_seconds, rss_mb

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs Linux /proc")


def test_a_process_found_by_its_command_line_reports_the_cpu_it_burned() -> None:
    tag = uuid.uuid4().hex
    burn = (
        "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
        "print('burned', flush=True)\ntime.sleep(30)\n"
    )
    child = subprocess.Popen(  # noqa: S603 - our own interpreter
        [sys.executable, "-c", burn, tag], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "burned"  # idle from here on
        assert 0.28 <= cpu_seconds(cmdline_contains=tag) < 5  # clock ticks round down
        assert cpu_seconds([child.pid]) == cpu_seconds(cmdline_contains=tag)
    finally:
        child.kill()
        child.wait()


def test_nothing_found_is_nan_and_own_pid_counts() -> None:
    assert math.isnan(cpu_seconds(cmdline_contains=uuid.uuid4().hex))
    assert math.isnan(cpu_seconds([]))
    assert cpu_seconds([os.getpid()]) > 0


def test_resident_memory_of_this_process() -> None:
    assert 1 < rss_mb(os.getpid()) < 100_000
