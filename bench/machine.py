"""Machine information saved beside every benchmark result."""

from __future__ import annotations

import os
import platform
import socket
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

import torch


def machine_info(packages: tuple[str, ...] = ()) -> dict[str, Any]:
    info: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        with open("/proc/meminfo") as handle:
            info["memory_gib"] = round(int(handle.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    for package in ("torch", "torch-geometric", "dask", "pandas", "numpy", "scipy", *packages):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return info
