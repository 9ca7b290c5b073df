"""Publishing files and folders whole: a finished temporary path is renamed over its final path."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path


def tmp_sibling(path: Path) -> Path:
    """A fresh hidden name beside ``path`` (same filesystem, so the final rename is atomic)."""
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


def swap_into_place(source: Path, target: Path) -> None:
    """Move ``source`` (file or folder) over ``target``: a folder replaces a folder through a rename aside (the old
    one is removed after), anything else with one ``os.replace``."""
    if target.is_dir() and not target.is_symlink():
        old = tmp_sibling(target)
        os.replace(target, old)
        os.replace(source, target)
        shutil.rmtree(old, ignore_errors=True)
        return
    if target.exists() and source.is_dir():
        target.unlink()
    os.replace(source, target)
