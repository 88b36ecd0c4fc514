"""glibc's malloc arenas in the worker.

glibc gives each thread that meets a locked arena one of its own, up to 8 per core. The worker has
many threads that allocate (librdkafka's, the drift writer, LightGBM's, Faust's loop), and memory
freed in one arena is not reused by the others: in a 1,000,000-message fuzz run the worker's
resident memory rose from 518 to 585 MB (10 % to 90 % of the run), and with two arenas it stayed
within 505-559 MB (README, "Bad input at volume").
"""

from __future__ import annotations

import ctypes
import ctypes.util

#: ``mallopt``'s parameter number for the arena cap (``M_ARENA_MAX`` in glibc's malloc.h).
M_ARENA_MAX = -8


def cap_arenas(n: int) -> bool:
    """Limit the arenas created from now on to ``n`` (0: glibc's default); whether it took.

    Call it before the threads start: arenas already made stay. Elsewhere than glibc, nothing.
    """
    if n <= 0:
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_ARENA_MAX, n))
