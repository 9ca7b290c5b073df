"""The process's heap: freed pages given back to the operating system (stages before a fork or after a large read)."""

from __future__ import annotations

import ctypes
import sys


def release_free_memory() -> bool:
    """Give freed memory back to the operating system: Arrow's memory pool's unused pages (when pyarrow is loaded:
    a mimalloc or jemalloc pool, which an environment may choose with ``ARROW_DEFAULT_MEMORY_POOL``, keeps a freed
    buffer's pages for reuse; under homerank's default, the system pool, this is glibc's trim again) and the C heap's
    free pages (glibc's ``malloc_trim(0)``); False where there is no glibc (macOS, musl). A stage calls it after
    dropping a large transient (a Parquet read's buffers, a graph build): glibc keeps freed chunks below its mmap
    threshold for reuse, and the stage's next large arrays, which glibc maps afresh, never reuse them, so the
    process's resident size would keep the transient's peak."""
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
