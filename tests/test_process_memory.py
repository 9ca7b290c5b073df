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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
@pytest.mark.parametrize("mode, freed_at_once", [("default", False), ("mapped", True), ("mapped, then reuse", False)])
def test_mapped_large_allocations_go_back_when_freed(mode: str, freed_at_once: bool):
    # a freed 16 MiB array raises glibc's mmap threshold (by default), so the next 4 MiB arrays come from the heap;
    # 50 of them freed between live 1 MiB arrays stay resident, unless large allocations are mapped
    code = textwrap.dedent(f"""
        import numpy as np, psutil
        from homerank.engine.memory import map_large_allocations, reuse_large_allocations
        mode = {mode!r}
        if mode != "default":
            assert map_large_allocations()
        if mode.endswith("reuse"):
            assert reuse_large_allocations()
        big = np.ones(16 << 20, np.uint8)
        del big
        transient, kept = [], []
        for _ in range(50):
            transient.append(np.ones(4 << 20, np.uint8))
            kept.append(np.ones(1 << 20, np.uint8))
        held = psutil.Process().memory_info().rss
        del transient
        print((held - psutil.Process().memory_info().rss) // 2**20)
    """)
    # glibc's own defaults: no MALLOC_* variable inherited (dask's nanny sets MALLOC_TRIM_THRESHOLD_ in the process
    # that starts a cluster, and an earlier test may have started one here; it switches the adaptive threshold off)
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=environment)
    assert done.returncode == 0, done.stderr
    freed_mib = int(done.stdout)
    assert freed_mib > 150 if freed_at_once else freed_mib < 50


def test_the_homepage_stage_maps_large_allocations_only_until_its_setup_peak(monkeypatch):
    """`large_allocations_mapped` maps large allocations for its block, hands out the switch back, and switches
    back however the block ends."""
    from homerank.engine import memory

    calls: list[str] = []
    monkeypatch.setattr(memory, "map_large_allocations", lambda: calls.append("map") or True)
    monkeypatch.setattr(memory, "reuse_large_allocations", lambda: calls.append("reuse") or True)
    with memory.large_allocations_mapped() as peak_past:
        assert calls == ["map"]
        peak_past()
    assert calls == ["map", "reuse", "reuse"]
    with pytest.raises(RuntimeError), memory.large_allocations_mapped():
        raise RuntimeError("a failed stage")
    assert calls[-1] == "reuse"
