"""The single CPU/GPU seam: every CPU/GPU decision of the job is made here, once.

`resolve_backend("auto" | "cpu" | "gpu")` is called once per job; the returned `Backend` is passed down to every
stage. Stage code is written against the shared pandas/NumPy/scipy.sparse subset and calls ``backend.xdf``
(pandas | cudf), ``backend.xp`` (numpy | cupy), ``backend.sparse`` (scipy.sparse | cupyx.scipy.sparse) and
``backend.torch_device`` instead of importing a library directly, so no function is written twice. Dask gets
the same switch through ``dataframe.backend`` (`Backend.dask_config`), local clusters come from
`Backend.local_cluster` and graph algorithms from `Backend.connected_components`.

The frame library and the torch device are named separately (``frames`` and ``torch_device``): a CUDA machine
without RAPIDS runs frames on pandas and the model on CUDA, and says so.

Rule for ``auto``: frames go to cuDF only when CUDA is usable from torch *and* RAPIDS (cudf, cupy) imports; the
model goes to CUDA whenever torch sees a CUDA device. ``gpu`` demands CUDA (frames stay on pandas, with a
warning, when RAPIDS is missing). cuGraph is used for graph statistics when it imports on a cuDF backend.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse
import scipy.sparse.csgraph

from homerank.engine.errors import HomerankError, quiet_user_error_tasks

if TYPE_CHECKING:
    import torch

    from homerank.engine.worker_processes import StartMethod

log = logging.getLogger(__name__)

DeviceChoice = Literal["auto", "cpu", "gpu"]
FrameLibrary = Literal["pandas", "cudf"]


def _rapids_modules() -> tuple[ModuleType, ModuleType, ModuleType] | None:
    """Return (cudf, cupy, cupyx.scipy.sparse) when RAPIDS imports, else None."""
    try:
        import cudf  # type: ignore[import-not-found]
        import cupy  # type: ignore[import-not-found]
        import cupyx.scipy.sparse as cupy_sparse  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return None
    return cudf, cupy, cupy_sparse


def _cugraph_available() -> bool:
    try:
        import cugraph  # type: ignore[import-not-found]  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


@dataclass(frozen=True)
class Backend:
    """Resolved compute backend.

    Attributes:
        frames: the dataframe library, ``"pandas"`` or ``"cudf"``.
        xdf: that dataframe module. xp: array module, ``numpy`` or ``cupy``.
        sparse: sparse-matrix module, ``scipy.sparse`` or ``cupyx.scipy.sparse``.
        model_device: where the model trains and scores, ``"cpu"`` or ``"cuda"`` (`torch_device` as a
            ``torch.device``: torch is imported only by the stages that use it, not by the ETL).
        graph_library: ``"scipy"`` or ``"cugraph"`` for graph algorithms (connected components).
    """

    frames: FrameLibrary
    xdf: ModuleType
    xp: ModuleType
    sparse: ModuleType
    model_device: Literal["cpu", "cuda"]
    graph_library: Literal["scipy", "cugraph"] = "scipy"

    @property
    def torch_device(self) -> torch.device:
        import torch

        return torch.device(self.model_device)

    @property
    def frames_on_gpu(self) -> bool:
        return self.frames == "cudf"

    @property
    def device_label(self) -> str:
        """What metrics.json reports as ``device``: ``"cuda"`` or ``"cpu"`` (where the model ran)."""
        return self.model_device

    def describe(self) -> dict[str, str]:
        """One line per choice, for logs and reports."""
        return {"frames": self.frames, "arrays": self.xp.__name__, "model": self.model_device,
                "graph": self.graph_library}

    def to_host(self, frame: Any) -> Any:
        """Bring a frame, series or index of this backend to pandas (no copy on the CPU path)."""
        return frame if isinstance(frame, (pd.DataFrame, pd.Series, pd.Index)) else frame.to_pandas()

    def asnumpy(self, array: Any) -> np.ndarray:
        return np.asarray(array) if self.xp is np else self.xp.asnumpy(array)

    def on_backend(self, frame: Any) -> Any:
        """A dask DataFrame with partitions of this backend's frame library (``to_backend``)."""
        return frame.to_backend(self.frames) if self.frames_on_gpu else frame

    @contextlib.contextmanager
    def dask_config(self) -> Iterator[None]:
        """Make ``dask.dataframe`` create partitions of this backend inside the block. Columns keep the dtypes the
        engine gives them (``dataframe.convert-string`` off: no per-partition string conversion pass)."""
        import dask

        with dask.config.set({"dataframe.backend": self.frames, "dataframe.convert-string": False}):
            yield

    def local_cluster(self, n_workers: int | None, threads_per_worker: int | None, processes: bool,
                      dashboard_address: str = "127.0.0.1:0", memory_limit: str | None = None,
                      local_directory: str | None = None, rmm_pool_size: str | None = "auto",
                      cudf_spill: bool = True, start_method: StartMethod = "auto") -> Any:
        """A local dask cluster for this backend: ``LocalCUDACluster`` (one worker process per GPU, dask-cuda, an
        RMM pool of ``rmm_pool_size`` per GPU and cuDF's device-to-host spilling) when frames live on the GPU, else
        ``LocalCluster``. ``memory_limit`` (per worker) and ``local_directory`` set where workers spill to disk.
        Everything listens on localhost only: the scheduler, the workers and the HTTP/dashboard endpoint (a free
        port unless ``dashboard_address`` names one). CPU worker processes start by ``start_method``
        (`homerank.engine.worker_processes`: 'auto' is a forkserver that imports the worker modules once) and get the
        worker malloc settings."""
        quiet_user_error_tasks()
        memory: dict[str, Any] = {}
        if memory_limit is not None:
            memory["memory_limit"] = float(memory_limit) if _is_number(memory_limit) else memory_limit
        if local_directory is not None:
            memory["local_directory"] = local_directory
        if self.frames_on_gpu:  # written from the dask-cuda documentation; never run on this project's machines
            import torch
            from dask_cuda import LocalCUDACluster  # type: ignore[import-not-found]

            pool = rmm_pool_size
            if pool == "auto":
                pool = f"{int(0.8 * torch.cuda.get_device_properties(0).total_memory) >> 20}MiB"
            return LocalCUDACluster(n_workers=n_workers, threads_per_worker=threads_per_worker or 1,
                                    host="127.0.0.1", dashboard_address=dashboard_address,
                                    worker_dashboard_address="127.0.0.1:0", rmm_pool_size=pool,
                                    enable_cudf_spill=cudf_spill, **memory)
        import dask
        from distributed import LocalCluster

        from homerank.engine.worker_processes import resolve_start_method, start_forkserver

        n_workers, threads_per_worker = default_workers(n_workers, threads_per_worker, processes)
        network = {"host": "127.0.0.1"} if processes else {}  # threads talk in-process, not over TCP
        workers: dict[str, Any] = {}
        if processes:
            method = resolve_start_method(start_method)
            log.info("dask: worker processes started by %s (cluster.start_method %s)", method, start_method)
            if method == "forkserver":
                start_forkserver(worker_environment())
            workers = {"distributed.worker.multiprocessing-method": method,
                       "distributed.worker.preload": [*dask.config.get("distributed.worker.preload", default=[]),
                                                      "homerank.engine.worker_processes"]}
        with dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environment(),
                              "distributed.scheduler.worker-saturation": WORKER_SATURATION, **workers}):
            return LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=processes,
                                dashboard_address=dashboard_address, worker_dashboard_address="127.0.0.1:0",
                                **network, **memory)

    def connected_components(self, rows: np.ndarray, cols: np.ndarray, num_nodes: int) -> np.ndarray:
        """Component label per node (num_nodes,) of the undirected graph with edges (rows[k], cols[k]) (each edge
        given once is enough: a symmetric graph may pass one direction, half the memory); labels are 0..C-1.
        cuGraph's weakly connected components on the GPU backend, scipy's csgraph otherwise (weak components of the
        directed edges, built as CSR without a COO copy when ``rows`` is sorted, as a CSR graph's rows are)."""
        if self.graph_library == "cugraph":
            return _cugraph_components(rows, cols, num_nodes)
        if rows.size > 1 and bool((rows[1:] < rows[:-1]).any()):
            order = np.argsort(rows, kind="stable")
            rows, cols = rows[order], cols[order]
        indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=num_nodes))])
        adjacency = scipy.sparse.csr_matrix((np.ones(rows.size), cols, indptr), shape=(num_nodes, num_nodes))
        return scipy.sparse.csgraph.connected_components(adjacency, directed=True, connection="weak")[1]


def _cugraph_components(rows: np.ndarray, cols: np.ndarray, num_nodes: int) -> np.ndarray:
    """GPU twin of the scipy path in `Backend.connected_components` (never run on this project's CI)."""
    import cudf  # type: ignore[import-not-found]
    import cugraph  # type: ignore[import-not-found]

    graph = cugraph.Graph(directed=False)
    graph.from_cudf_edgelist(cudf.DataFrame({"src": rows, "dst": cols}), source="src", destination="dst")
    labels = cugraph.weakly_connected_components(graph).to_pandas()
    out = np.arange(num_nodes)  # isolated nodes (absent from the edge list): a component of their own
    out[labels["vertex"].to_numpy()] = num_nodes + labels["labels"].to_numpy()
    return np.unique(out, return_inverse=True)[1]


# tasks the scheduler hands a worker at once per thread: dask's 1.1 gives a single-threaded worker 2 (one running, one
# waiting), so the first worker to start takes the log's pieces faster than the other and, every later pass following
# the data, keeps 4 of 6 partitions (measured at 10^7 events, 2 workers: 8.3 s of tasks against 5.2 s); 1.0 hands one
# per thread and keeps the rest on the scheduler for whichever worker frees first (6.8 s and 6.8 s)
WORKER_SATURATION = 1.0


def worker_environment() -> dict[str, Any]:
    """`homerank.engine.worker_processes.worker_environment`: the variables every local worker process starts with."""
    from homerank.engine.worker_processes import worker_environment as environment

    return environment()


MAX_THREADS = 8  # the default local cluster of threads: one worker with at most this many threads


def default_workers(n_workers: int | None, threads_per_worker: int | None, processes: bool) -> tuple[int, int | None]:
    """The local CPU cluster's (workers, threads per worker) when the config leaves them out: with processes, one
    single-threaded worker process per core this process may use; with threads, ONE worker with a thread per core,
    at most ``MAX_THREADS``. Measured on 16 cores at 10^7 events (bench/results/etl/strong-events-10000000-16cpu*.md):
    past 8 threads they contend for the interpreter (8.3 s with 8, 13.1 s with 16). One worker, not one per thread:
    the scheduler places the ingest's first tasks unevenly over workers (4 and 2 of 6 on 2 workers, measured) and
    every later per-user step follows its data, so one worker idled ~30% of the 2-core ETL; the threads of one
    worker take the next task whenever they are free. Given values are kept."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if n_workers is None:
        if threads_per_worker is not None:
            return (max(1, cores // threads_per_worker), threads_per_worker) if processes else (1, threads_per_worker)
        return (cores, 1) if processes else (1, min(cores, MAX_THREADS))
    return n_workers, threads_per_worker


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# what an NVIDIA driver puts on a Linux machine (WSL: /dev/dxg); without any of them CUDA cannot be visible
_DRIVER_PATHS = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg", "/proc/driver/nvidia")


def cuda_available() -> bool:
    """Whether torch sees a CUDA device. On Linux without an NVIDIA driver this is False without importing torch
    (~2 s and ~180 MiB that a stage without a model, such as the ETL, does not need)."""
    if sys.platform.startswith("linux") and not any(os.path.exists(path) for path in _DRIVER_PATHS):
        return False
    import torch

    return torch.cuda.is_available()


CPU = Backend("pandas", pd, np, scipy.sparse, "cpu")


def resolve_backend(device: DeviceChoice | str = "auto") -> Backend:
    """Turn ``--device auto|cpu|gpu`` into a `Backend` (see the module docstring for the rule)."""
    if device not in ("auto", "cpu", "gpu"):
        raise HomerankError(f"--device must be one of auto, cpu, gpu (got {device!r})")
    if device == "cpu":
        return CPU
    cuda = cuda_available()
    if device == "gpu" and not cuda:
        raise HomerankError("--device gpu: no CUDA device is visible to torch; use --device cpu or auto")
    if not cuda:
        log.info("device auto: no CUDA device, using the CPU backend")
        return CPU
    rapids = _rapids_modules()
    if rapids is None:
        log.warning("device %s: RAPIDS (cudf/cupy) not importable; frames stay on pandas, the model runs on CUDA",
                    device)
        return Backend("pandas", pd, np, scipy.sparse, "cuda")
    cudf, cupy, cupy_sparse = rapids
    graph_library = "cugraph" if _cugraph_available() else "scipy"
    return Backend("cudf", cudf, cupy, cupy_sparse, "cuda", graph_library)
