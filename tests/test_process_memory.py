"""What a stage process gives back: Arrow's buffers come from the system allocator (whose freed pages a stage can
return), and `release_free_memory` returns the C heap's free pages to the operating system."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

POOL = "import homerank, pyarrow, pandas; print(pyarrow.default_memory_pool().backend_name)"


def _pool_name(environment: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-c", POOL], capture_output=True, text=True, timeout=120, env=environment)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_importing_homerank_first_makes_arrow_use_the_system_allocator():
    environment = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    assert _pool_name(environment) == "system"


def test_a_pool_the_user_chose_is_kept():
    assert _pool_name({**os.environ, "ARROW_DEFAULT_MEMORY_POOL": "mimalloc"}) == "mimalloc"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")
def test_release_free_memory_returns_the_freed_heap():
    # 3000 chunks of 100 KiB (below glibc's mmap threshold: heap), freed under a live chunk allocated after them,
    # which pins the heap's top: glibc keeps the ~300 MiB until malloc_trim
    code = textwrap.dedent("""
        import numpy as np, psutil
        from homerank.engine.memory import release_free_memory
        process = psutil.Process()
        chunks = [np.ones(100 * 1024 // 8) for _ in range(3000)]
        pin = np.ones(100 * 1024 // 8)
        del chunks
        held = process.memory_info().rss
        released = release_free_memory()
        print(released, (held - process.memory_info().rss) // 2**20)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    released, freed_mib = done.stdout.split()
    assert released == "True" and int(freed_mib) > 200
