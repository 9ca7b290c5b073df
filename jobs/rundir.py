"""Run-directory layout and atomic writes.

Every artifact is written to a temporary sibling path and moved into place with ``os.replace``, so a
killed job leaves either the previous complete artifact or none, never a half-written one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from homerank.engine.errors import HomerankError


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run directory."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    config = property(lambda self: self.root / "config.yaml")
    metrics = property(lambda self: self.root / "metrics.json")
    report = property(lambda self: self.root / "report.md")
    report_html = property(lambda self: self.root / "report.html")
    logs = property(lambda self: self.root / "logs")
    quarantine = property(lambda self: self.root / "quarantine")
    etl = property(lambda self: self.root / "etl")
    interactions = property(lambda self: self.root / "etl" / "interactions.parquet")
    edges = property(lambda self: self.root / "etl" / "edges.parquet")
    etl_stats = property(lambda self: self.root / "etl" / "stats.json")
    user_index = property(lambda self: self.root / "user_index.parquet")
    item_index = property(lambda self: self.root / "item_index.parquet")
    catalogue = property(lambda self: self.root / "etl" / "items.parquet")
    graph = property(lambda self: self.root / "graph" / "graph.pt")
    graph_stats = property(lambda self: self.root / "graph" / "stats.json")
    checkpoints = property(lambda self: self.root / "checkpoints")
    train_summary = property(lambda self: self.root / "train" / "summary.json")
    embeddings = property(lambda self: self.root / "train" / "embeddings.pt")
    evaluation = property(lambda self: self.root / "evaluate" / "metrics.json")
    rankings = property(lambda self: self.root / "rankings")
    rank_stats = property(lambda self: self.root / "rank" / "stats.json")
    timings = property(lambda self: self.root / "logs" / "timings.json")
    stages = property(lambda self: self.root / "logs" / "stages.json")
    homepage = property(lambda self: self.root / "homepage")
    homepage_stats = property(lambda self: self.root / "homepage_stats.json")

    def ensure(self) -> RunDir:
        self.root.mkdir(parents=True, exist_ok=True)
        return self


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it over ``path`` (file or directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        if path.is_dir() and tmp.is_dir():
            old = _tmp_sibling(path)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_parquet(path: Path, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


MANIFEST = "_SUCCESS.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_parquet_dataset(path: Path, frame: pd.DataFrame, rows_per_file: int = 1_000_000) -> None:
    """A directory of ``part-NNNNN.parquet`` files plus a ``_SUCCESS.json`` manifest (rows and sha256 per
    file), swapped into place as a whole: a dataset without its manifest is never complete."""
    with atomic_path(path) as tmp:
        tmp.mkdir(parents=True)
        files = {}
        for number, start in enumerate(range(0, max(len(frame), 1), rows_per_file)):
            part = tmp / f"part-{number:05d}.parquet"
            chunk = frame.iloc[start : start + rows_per_file]
            chunk.to_parquet(part, index=False)
            files[part.name] = {"rows": len(chunk), "sha256": _sha256(part)}
        manifest = {"rows": len(frame), "columns": [str(c) for c in frame.columns], "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def verify_dataset(path: Path) -> dict[str, Any]:
    """Check a dataset written by `write_parquet_dataset` against its manifest; returns the manifest."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.exists():
        raise HomerankError(f"{path}: incomplete dataset (no {MANIFEST})")
    manifest = json.loads(manifest_path.read_text())
    for name, expected in manifest["files"].items():
        part = path / name
        if not part.exists() or _sha256(part) != expected["sha256"]:
            raise HomerankError(f"{part}: missing or changed since it was written (checksum mismatch)")
    return manifest
