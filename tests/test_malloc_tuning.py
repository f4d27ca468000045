"""glibc allocator tuning (tdt.malloc.keep_freed_memory)."""

from __future__ import annotations

import ctypes.util
import platform

import pytest

from tdt.malloc import applied_in_this_process, keep_freed_memory


@pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc" or ctypes.util.find_library("c") is None,
    reason="mallopt is glibc-only; this machine has no glibc",
)
def test_thresholds_are_accepted_by_glibc() -> None:
    assert keep_freed_memory() is True
    assert applied_in_this_process()
    assert keep_freed_memory() is True  # idempotent
