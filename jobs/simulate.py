"""``homerank simulate-feedback``: simulated shoppers react to a run's served homepage
(`homerank.engine.synthetic_feedback`), and their clicks, carts and purchases are written as a behaviour log that
the next (incremental) run reads.

Reads ``RUN/impressions/`` (verified against its manifest) and the catalogue the run was made with (its config's
``ingest.catalogue``, or ``--catalogue``): a catalogue written by ``homerank generate`` carries the spec of the
latent model in its metadata (`homerank.engine.synthetic.read_spec`). Writes ``OUT/events/part-NNNNN.parquet`` (one
per impressions part) and ``OUT/summary.json``, both staged beside their final path and renamed into place at the
end, so a failed run leaves the previous output (or none).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from homerank.engine.errors import HomerankError
from homerank.engine.files import swap_into_place
from homerank.engine.synthetic import make_catalogue, read_spec
from homerank.engine.synthetic_feedback import Shoppers, react
from homerank.jobs.config import load_config
from homerank.jobs.rundir import RunDir, verify_dataset, write_json

log = logging.getLogger(__name__)


def catalogue_of(run: RunDir, catalogue: str | None) -> str:
    """The catalogue to read the latent model from: ``catalogue``, else the run's ``ingest.catalogue``."""
    if catalogue is None:
        if not run.config.is_file():
            raise HomerankError(f"{run.config}: not found; give --catalogue (the generated log's items.parquet)")
        catalogue = load_config(run.config).ingest.catalogue
        if catalogue is None:
            raise HomerankError(f"{run.config}: the run has no ingest.catalogue; give --catalogue (the generated "
                                "log's items.parquet)")
    if not Path(catalogue).is_file():
        raise HomerankError(f"{catalogue}: catalogue not found; give --catalogue (the generated log's items.parquet)")
    return str(catalogue)


def simulate_feedback(run: RunDir, out: Path, seed: int = 42, catalogue: str | None = None,
                      shoppers: Shoppers | None = None) -> dict[str, Any]:
    """Write the feedback log of ``run``'s impressions to ``out`` (see the module docstring); returns the summary
    written to ``out/summary.json``."""
    started = time.perf_counter()
    shoppers = shoppers or Shoppers()
    shoppers.check()
    if not (run.impressions / "_SUCCESS.json").is_file():
        raise HomerankError(f"{run.impressions}: no impressions; run the homepage stage first "
                            f"(`homerank homepage --out {run.root}`)")
    verify_dataset(run.impressions)
    path = catalogue_of(run, catalogue)
    spec = read_spec(path)
    if spec is None:
        raise HomerankError(f"{path}: not a catalogue written by `homerank generate` (no spec in its metadata): "
                            "simulated shoppers need the generator's latent tastes")
    items, world = make_catalogue(spec)
    prices = items["price"].to_numpy(dtype=np.float64)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    staging = out / ".events.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    counts = {"impressions": 0, "users": 0, "click": 0, "cart": 0, "purchase": 0}
    run_ids: set[str] = set()
    try:
        for number, part in enumerate(sorted(run.impressions.glob("part-*.parquet"))):
            impressions = pd.read_parquet(part)
            if impressions.empty:
                continue
            events = react(impressions, spec, world, prices, number, seed, shoppers)
            events.to_parquet(staging / f"part-{number:05d}.parquet", index=False)
            counts["impressions"] += len(impressions)
            counts["users"] += int(impressions["user_id"].nunique())
            for kind, n in events["event_type"].value_counts().items():
                counts[str(kind)] += int(n)
            run_ids.update(impressions["run_id"].astype(str).unique())
        swap_into_place(staging, out / "events")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    summary = {"run": str(run.root), "run_ids": sorted(run_ids), "catalogue": path, "seed": seed,
               "shoppers": asdict(shoppers), **counts,
               "ctr": round(counts["click"] / counts["impressions"], 6) if counts["impressions"] else None,
               "events": counts["click"] + counts["cart"] + counts["purchase"],
               "seconds": round(time.perf_counter() - started, 3)}
    write_json(out / "summary.json", summary)
    log.info("simulate-feedback: %s", summary)
    return summary
