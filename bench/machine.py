"""Machine information saved beside every benchmark result."""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
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


def write_result(result: dict[str, Any], path: Path | None) -> None:
    """``result`` as indented JSON at ``path`` (its folder made), nothing when ``path`` is None."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")


def run_parser(module: str, doc: str) -> argparse.ArgumentParser:
    """The command line of a bench over one trained run directory: ``python -m MODULE --run RUN [--json FILE]``;
    the caller adds its own options."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a run directory with train done (train/scorer.pt)")
    parser.add_argument("--json", type=Path, help="result file")
    return parser
