"""replay.cpu: CPU seconds of processes, found by pid or by their command line."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
import uuid

import pytest

from replay.cpu import cpu_seconds

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs Linux /proc")


def test_a_process_found_by_its_command_line_reports_the_cpu_it_burned() -> None:
    tag = uuid.uuid4().hex
    burn = "import time, sys\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
    child = subprocess.Popen(  # noqa: S603 - our own interpreter
        [sys.executable, "-c", burn + "time.sleep(30)", tag]
    )
    try:
        deadline = time.monotonic() + 20
        while cpu_seconds(cmdline_contains=tag) < 0.25 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert 0.25 <= cpu_seconds(cmdline_contains=tag) < 5
        assert cpu_seconds([child.pid]) == cpu_seconds(cmdline_contains=tag)
    finally:
        child.kill()
        child.wait()


def test_nothing_found_is_nan_and_own_pid_counts() -> None:
    assert math.isnan(cpu_seconds(cmdline_contains=uuid.uuid4().hex))
    assert math.isnan(cpu_seconds([]))
    assert cpu_seconds([os.getpid()]) > 0
