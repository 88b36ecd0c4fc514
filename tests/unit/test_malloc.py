"""engine/malloc.py: the worker's arena cap."""

from __future__ import annotations

import platform

import pytest

from engine.malloc import cap_arenas


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_the_cap_takes_on_glibc() -> None:
    assert cap_arenas(2) is True


def test_zero_leaves_glibc_alone() -> None:
    assert cap_arenas(0) is False
