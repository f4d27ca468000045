"""glibc allocator tuning (malloc_tuning.keep_freed_memory)."""

from __future__ import annotations

import ctypes.util
import platform

import pytest

from malloc_tuning import keep_freed_memory


@pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc" or ctypes.util.find_library("c") is None,
    reason="mallopt is glibc-only; this machine has no glibc",
)
def test_thresholds_are_accepted_by_glibc() -> None:
    keep_freed_memory.cache_clear()
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True  # idempotent (cached)
