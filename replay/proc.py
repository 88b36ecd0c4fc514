"""What the processes of a bench run cost this machine, from ``/proc`` (Linux).

The live bench runs the broker, Valkey, the worker and the paced producer on the same cores; how
much of them each one takes says what a latency figure is made of (elsewhere, no ``/proc``: CPU
figures are ``nan``). The fuzz run follows the worker's memory.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path

_PROC = Path("/proc")


def _stat_seconds(pid: int | str) -> float | None:
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces and parentheses
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def cpu_seconds(pids: Iterable[int] = (), cmdline_contains: str | None = None) -> float:
    """User + system CPU seconds of ``pids`` and of every process whose command line contains
    ``cmdline_contains`` (e.g. a server's ``host:port``); ``nan`` if none is found."""
    total, found = 0.0, False
    wanted = {str(p) for p in pids}
    if cmdline_contains is not None and _PROC.is_dir():
        needle = cmdline_contains.encode()
        for d in _PROC.iterdir():
            if not d.name.isdigit() or d.name in wanted:
                continue
            try:
                if needle in (d / "cmdline").read_bytes():
                    wanted.add(d.name)
            except OSError:
                continue
    for pid in wanted:
        s = _stat_seconds(pid)
        if s is not None:
            total, found = total + s, True
    return total if found else math.nan


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` in MB (0 if the kernel does not say)."""
    for line in (_PROC / str(pid) / "status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0
