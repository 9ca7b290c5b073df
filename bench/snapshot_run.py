"""``homerank run`` for the accuracy bench: the same pipeline, plus the scoring embeddings saved at every validation
step (``RUN/bench_snapshots/epoch_NNNN.pt``: users, items, epoch, elapsed seconds) for the accuracy-vs-time curve.
The snapshots are the bench's business, so the core config has no option for them; the pipeline's
``on_evaluation`` hook hands them over.

    python -m bench.snapshot_run --input DATA --out RUN --config preset:recipe
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from homerank.engine.backend import resolve_backend
from homerank.jobs.config import apply_dotted, load_config
from homerank.jobs.hygiene import quiet_library_warnings, run_log
from homerank.jobs.lock import run_lock
from homerank.jobs.pipeline import run_pipeline
from homerank.jobs.rundir import RunDir


def snapshot_folder(run: RunDir) -> Path:
    return run.root / "bench_snapshots"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="LightGCN-format folder (train.txt, test.txt)")
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--config", default="preset:recipe")
    args = parser.parse_args(argv)
    quiet_library_warnings()
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("distributed", "dask"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    run = RunDir(Path(args.out)).ensure()
    config = apply_dotted(load_config(args.config), {"ingest.format": "lightgcn"}, source="bench")
    folder = snapshot_folder(run)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.pt"):
        stale.unlink()

    def save(epoch: int, users: torch.Tensor, items: torch.Tensor, elapsed: float) -> None:
        torch.save({"users": users.cpu(), "items": items.cpu(), "epoch": epoch, "elapsed": elapsed},
                   folder / f"epoch_{epoch:04d}.pt")

    with run_lock(run), run_log(run.log_file):
        run_pipeline(args.input, run, config, resolve_backend(config.device), show_progress=False,
                     on_evaluation=save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
