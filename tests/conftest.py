"""Shared fixtures: tiny hand-made logs and a tiny synthetic log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
from hypothesis import settings

os.environ.setdefault("OMP_NUM_THREADS", "2")

# CI replays a fixed set of generated examples (a red CI must mean a regression, not a lucky draw);
# local runs explore new examples every time.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
torch.set_num_threads(2)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (GPU-only test)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


ROOT = Path(__file__).resolve().parents[1]


def run_bench(*args: str, result: Path, timeout: int = 240) -> dict:
    """``python -m bench ARGS --json RESULT`` from the repository root; asserts exit 0 (showing the output's tail
    otherwise) and returns the JSON it wrote."""
    completed = subprocess.run([sys.executable, "-m", "bench", *args, "--json", str(result)], cwd=ROOT,
                               capture_output=True, text=True, timeout=timeout, check=False)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return json.loads(result.read_text())


def make_events(rows: list[tuple]) -> pd.DataFrame:
    """rows of (user, item, event_type, 'YYYY-MM-DD HH:MM') -> event frame."""
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "timestamp"])
    frame["timestamp"] = pd.to_datetime(frame["timestamp"]).astype("datetime64[ns]")
    return frame


@pytest.fixture(scope="session")
def tiny_log(tmp_path_factory) -> Path:
    """A small synthetic log (events/ + items.parquet) shared by end-to-end tests."""
    from homerank.engine.synthetic import SyntheticSpec, generate

    out = tmp_path_factory.mktemp("tiny_log")
    generate(out, SyntheticSpec(users=400, items=200, events=20_000, users_per_partition=150, seed=7))
    return out


TINY_CONFIG = """
seed: 3
device: cpu
interactions:
  min_user_interactions: 3
  min_item_interactions: 3
train:
  embedding_dim: 16
  num_layers: 2
  epochs: 4
  batch_size: 2048
  lr: 0.01
  checkpoint_every: 2
  threads: 2
rank:
  k: 10
"""


@pytest.fixture()
def tiny_config(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_CONFIG)
    return path


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file under ``root``: what a shared, read-only run directory must keep."""
    return {str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in sorted(root.rglob("*")) if path.is_file()}


HOMEPAGE_CONFIG = """
seed: 3
device: cpu
interactions: {min_user_interactions: 3, min_item_interactions: 3}
train: {embedding_dim: 16, num_layers: 2, epochs: 3, batch_size: 2048, lr: 0.01, checkpoint_every: 2, threads: 2}
rank: {k: 10}
homepage:
  max_per_category: 2
  new_arrival_days: 30
  repeat_purchase_categories: [Coffee, Grocery, Pets, Books, Shoes, Garden, Kitchen, Toys, Audio]
"""


def homepage_config(path: Path, log: Path) -> Path:
    """HOMEPAGE_CONFIG with ``log``'s catalogue, written to ``path``: the config homepage_run was made with."""
    path.write_text(HOMEPAGE_CONFIG.replace("seed: 3", f"seed: 3\ningest: {{catalogue: {log / 'items.parquet'}}}"))
    return path


@pytest.fixture(scope="session")
def homepage_run(tiny_log, tmp_path_factory) -> Iterator[tuple[Path, Path]]:
    """``homerank run`` with homepage_config on the tiny log, once per session: (run, log), every stage done.

    Shared and read-only: a test that reruns a stage or changes a file works on a ``shutil.copytree`` of it (the
    copy keeps the files' mtimes, so ``run --resume`` on the copy finds every stage up to date). The teardown
    checks that no test wrote into it."""
    from homerank.jobs.cli import main

    root = tmp_path_factory.mktemp("homepage_run")
    config = homepage_config(root / "c.yaml", tiny_log)
    run = root / "run"
    assert main(["run", "--input", str(tiny_log / "events"), "--out", str(run), "--config", str(config),
                 "--quiet"]) == 0
    before = tree_state(run)
    yield run, tiny_log
    after = tree_state(run)
    changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
    assert not changed, f"a test wrote into the shared homepage_run directory: copy it first ({changed[:5]})"


