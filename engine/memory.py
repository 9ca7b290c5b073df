"""The process's heap: freed pages given back to the operating system (stages before a fork or after a large read)."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


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


# glibc's mallopt parameters (<malloc.h>) and its defaults on 64-bit Linux
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MAPPED_FROM = 128 * 1024  # the mmap threshold glibc starts with
REUSED_BELOW = 32 * 1024 * 1024  # the most glibc raises it to by itself (DEFAULT_MMAP_THRESHOLD_MAX)


TRIMMED_ABOVE = 2 * REUSED_BELOW  # the trim threshold glibc pairs with it


def _mallopt(parameter: int, value: int) -> bool:
    """glibc's ``mallopt(parameter, value)`` in this process; False (nothing changed) elsewhere (macOS, musl)."""
    name = ctypes.util.find_library("c")
    if not sys.platform.startswith("linux") or name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # a libc without mallopt (musl)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(parameter, value) == 1


def map_large_allocations() -> bool:
    """From now on every allocation of ``MAPPED_FROM`` (128 KiB) or more gets its own memory mapping, unmapped as soon
    as it is freed (glibc's ``mallopt(M_MMAP_THRESHOLD)``, which also stops glibc raising that threshold by itself).

    By default glibc raises the threshold to the size of each mapped block that is freed (up to 32 MiB), so after a
    process frees its first large arrays, arrays of up to that size come from the heap, and once freed they stay
    resident for reuse: a setup that makes and drops many transients of 1-30 MB while it holds its large inputs peaks
    at its inputs plus the transients it ever held. Measured on the homepage stage's setup at 3 * 10^7 events: 2.20 ->
    1.91 GiB at its peak, the setup slower by ~10% (each mapping's pages are faulted in afresh). Whether a hot loop
    pays for it depends on how many mid-sized arrays it makes: the homepage's blocks were 35% slower mapped (they
    want `reuse_large_allocations` back), the training steps at 3 * 10^7 events no slower measurably (a few dozen
    transients per ~17 s step beside (N, d) tables that are mapped anyway) and 0.2-0.4 GiB lower. False where there
    is no glibc."""
    return _mallopt(M_MMAP_THRESHOLD, MAPPED_FROM)


def reuse_large_allocations() -> bool:
    """Allocations below ``REUSED_BELOW`` (32 MiB) come from the heap and freed ones are kept for reuse, and the heap's
    top is trimmed only when 64 MiB are free there: glibc's own rule once warmed up, fixed (after
    `map_large_allocations`; the homepage's block builders, whose per-block arrays of 1-30 MB would otherwise be mapped
    and faulted in afresh each time: 35% slower blocks at 3 * 10^6 events; the ETL's dask worker processes, which
    get these values as ``WORKER_MALLOC``). False where there is no glibc."""
    return _mallopt(M_MMAP_THRESHOLD, REUSED_BELOW) and _mallopt(M_TRIM_THRESHOLD, TRIMMED_ABOVE)


@contextmanager
def large_allocations_mapped() -> Iterator[Callable[[], bool]]:
    """`map_large_allocations` for the block, which gets `reuse_large_allocations` to end it early (once a peak is
    past); heap reuse is back on when the block ends, however it ends. On entry the heap's free pages go back to the
    system (`release_free_memory`): no allocation the block maps would reuse them (the train stage enters it once
    per epoch, after the evaluation's heap-made transients)."""
    map_large_allocations()
    release_free_memory()
    try:
        yield reuse_large_allocations
    finally:
        reuse_large_allocations()
