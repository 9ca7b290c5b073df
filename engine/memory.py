"""The process's heap: freed pages given back to the operating system (stages before a fork or after a large read)."""

from __future__ import annotations

import ctypes
import sys


def release_free_memory() -> bool:
    """Give freed memory back to the operating system: Arrow's memory pool's unused pages (when pyarrow is loaded)
    and the C heap's free pages (glibc's ``malloc_trim(0)``); False where there is no glibc (macOS, musl). A stage
    calls it after dropping a large transient (a Parquet read's buffers, a graph build): glibc keeps freed chunks
    below its mmap threshold for reuse, and the stage's next large arrays, which glibc maps afresh, never reuse them,
    so the process's resident size would keep the transient's peak; Arrow's allocator (mimalloc or jemalloc) keeps
    the pages of a read's freed buffers likewise (at 3 * 10^7 events, after the homepage stage read its edges and
    interactions: 1.75 GiB resident, 1.39 GiB once released, with the same 0.93 GiB of frames)."""
    arrow = sys.modules.get("pyarrow")
    if arrow is not None:
        arrow.default_memory_pool().release_unused()
    try:
        libc = ctypes.CDLL("libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return False
    trim(0)
    return True
