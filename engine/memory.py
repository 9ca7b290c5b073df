"""The process's heap: freed pages given back to the operating system (stages before a fork or after a large read)."""

from __future__ import annotations

import ctypes


def release_free_memory() -> bool:
    """Give the C heap's free pages back to the operating system (glibc's ``malloc_trim(0)``); False where there is
    no glibc (macOS, musl). A stage calls it after dropping a large transient (a Parquet read's buffers, a graph
    build): glibc keeps freed chunks below its mmap threshold for reuse, and the stage's next large arrays, which
    glibc maps afresh, never reuse them, so the process's resident size would keep the transient's peak."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return False
    trim(0)
    return True
