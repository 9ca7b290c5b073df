"""The single CPU/GPU seam.

`resolve_backend("auto" | "cpu" | "gpu")` is called once per job; the returned `Backend` is passed down to
every stage. Stage code is written against the shared pandas/NumPy/scipy.sparse subset and calls
``backend.xdf`` (pandas | cudf), ``backend.xp`` (numpy | cupy), ``backend.sparse`` (scipy.sparse |
cupyx.scipy.sparse) and ``backend.torch_device`` instead of importing a library directly, so no function is
written twice. Dask gets the same switch through ``dataframe.backend`` ("pandas" | "cudf").

Rule for ``auto``: the GPU path is chosen only when CUDA is usable from torch *and* RAPIDS (cudf, cupy)
imports. ``gpu`` demands CUDA; if RAPIDS is missing the frames stay on pandas and only the model runs on
CUDA (logged as a warning), which is what a plain PyTorch GPU box gives you.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse
import torch
from homerank.engine.errors import HomerankError

log = logging.getLogger(__name__)

DeviceChoice = Literal["auto", "cpu", "gpu"]


def _rapids_modules() -> tuple[ModuleType, ModuleType, ModuleType] | None:
    """Return (cudf, cupy, cupyx.scipy.sparse) when RAPIDS imports, else None."""
    try:
        import cudf  # type: ignore[import-not-found]
        import cupy  # type: ignore[import-not-found]
        import cupyx.scipy.sparse as cupy_sparse  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return None
    return cudf, cupy, cupy_sparse


@dataclass(frozen=True)
class Backend:
    """Resolved compute backend.

    Attributes:
        name: ``"cpu"`` or ``"gpu"`` (frames on the GPU).
        xdf: dataframe module, ``pandas`` or ``cudf``.
        xp: array module, ``numpy`` or ``cupy``.
        sparse: sparse-matrix module, ``scipy.sparse`` or ``cupyx.scipy.sparse``.
        torch_device: where the model trains (``cpu`` or ``cuda``).
    """

    name: Literal["cpu", "gpu"]
    xdf: ModuleType
    xp: ModuleType
    sparse: ModuleType
    torch_device: torch.device

    @property
    def dask_dataframe_backend(self) -> str:
        return "cudf" if self.name == "gpu" else "pandas"

    @property
    def device_label(self) -> str:
        """What metrics.json reports as ``device``: ``"cuda"`` or ``"cpu"`` (where the model ran)."""
        return "cuda" if self.torch_device.type == "cuda" else "cpu"

    def to_host(self, frame: Any) -> pd.DataFrame:
        """Bring a frame of this backend to pandas (no copy on the CPU path)."""
        return frame if isinstance(frame, pd.DataFrame) else frame.to_pandas()

    def from_host(self, frame: pd.DataFrame) -> Any:
        return frame if self.xdf is pd else self.xdf.from_pandas(frame)

    def asnumpy(self, array: Any) -> np.ndarray:
        return np.asarray(array) if self.xp is np else self.xp.asnumpy(array)

    @contextlib.contextmanager
    def dask_config(self) -> Iterator[None]:
        """Make ``dask.dataframe`` create partitions of this backend inside the block."""
        import dask

        with dask.config.set({"dataframe.backend": self.dask_dataframe_backend}):
            yield


def cuda_available() -> bool:
    return torch.cuda.is_available()


def resolve_backend(device: DeviceChoice | str = "auto") -> Backend:
    """Turn ``--device auto|cpu|gpu`` into a `Backend` (see the module docstring for the rule)."""
    if device not in ("auto", "cpu", "gpu"):
        raise HomerankError(f"--device must be one of auto, cpu, gpu (got {device!r})")
    cpu = Backend("cpu", pd, np, scipy.sparse, torch.device("cpu"))
    if device == "cpu":
        return cpu
    rapids = _rapids_modules() if cuda_available() else None
    if device == "auto":
        if rapids is None:
            log.info("device auto: CUDA+RAPIDS not both available, using the CPU backend")
            return cpu
        cudf, cupy, cupy_sparse = rapids
        return Backend("gpu", cudf, cupy, cupy_sparse, torch.device("cuda"))
    if not cuda_available():
        raise HomerankError("--device gpu: no CUDA device is visible to torch; use --device cpu or auto")
    if rapids is None:
        log.warning("--device gpu: RAPIDS (cudf/cupy) not importable; frames stay on pandas, model on CUDA")
        return Backend("cpu", pd, np, scipy.sparse, torch.device("cuda"))
    cudf, cupy, cupy_sparse = rapids
    return Backend("gpu", cudf, cupy, cupy_sparse, torch.device("cuda"))
