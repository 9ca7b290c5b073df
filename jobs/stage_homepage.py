"""Stage 6 — homepage: turn model scores, the catalogue and recent behaviour into a personalised page of
ordered sections per user, with rules applied across the whole page.

This stage only reads the run directory, scores the model's candidates (``candidates`` per user, with the
run's scorer, ensemble-aware) and writes the outputs; the homepage itself (sections, page rules, diversity,
merchandising, rule check and page quality) is ``homerank.homepage``, see ``homerank.homepage.build``.
A log without timestamps or event types (the lightgcn format) gets no homepage.

Writes ``homepage/`` (Parquet: user_id, section, section_title, slot, item_id, score, reason, with a
``_SUCCESS.json`` manifest), ``homepage.jsonl`` (one object per user, rows in order) and
``homepage_stats.json`` (page-rule check and page-quality metrics next to a plain top-K baseline).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from homerank.engine import schema
from homerank.engine.backend import Backend
from homerank.gnn.metrics import top_k
from homerank.homepage.build import build_pages
from homerank.homepage.export import page_records
from homerank.jobs.artifacts import load_embeddings, load_scorer, require
from homerank.jobs.config import JobConfig
from homerank.jobs.rundir import RunDir, atomic_path, read_json, write_json, write_parquet_dataset

log = logging.getLogger(__name__)


def run_homepage(run: RunDir, config: JobConfig, backend: Backend) -> dict[str, Any]:
    """Build every user's page from the run's artifacts and write the outputs; returns the stats written to
    ``homepage_stats.json``."""
    settings = config.homepage
    edges = pd.read_parquet(require(run.edges, "etl"))
    interactions = pd.read_parquet(require(run.interactions, "etl"))
    if schema.LAST_TS not in interactions.columns:  # e.g. the lightgcn format: pairs without time or event type
        stats = {"skipped": "the input has no timestamps or event types (lightgcn format): no homepage"}
        log.info("homepage: %s", stats["skipped"])
        write_json(run.homepage_stats, stats)
        return stats
    user_index = pd.read_parquet(require(run.user_index, "etl"))
    item_index = pd.read_parquet(require(run.item_index, "etl"))
    user_emb, item_emb = load_embeddings(run)
    etl = read_json(require(run.etl_stats, "etl"))
    ref_time = pd.Timestamp(etl.get("reference_time") or interactions[schema.LAST_TS].max())
    device = backend.torch_device
    k = min(settings.candidates, item_emb.shape[0])
    cand_items, cand_scores = top_k(load_scorer(run, device), torch.arange(user_emb.shape[0]), k, None,
                                    config.rank.batch_size, device)
    catalogue = pd.read_parquet(run.catalogue) if run.catalogue.exists() else None
    rankings = pd.read_parquet(run.rankings) if run.rankings.exists() else None
    homepage = build_pages(cand_items.numpy(), cand_scores.numpy(), item_emb, user_emb, interactions, edges,
                           user_index, item_index, catalogue, ref_time, settings, rankings)
    write_parquet_dataset(run.homepage, homepage.page)
    _write_jsonl(run.homepage_jsonl, homepage.page)
    write_json(run.homepage_stats, homepage.stats)
    stats = homepage.stats
    log.info("homepage: %d users, %d slots, sections %s", stats["users"], stats["rows"], stats["sections"])
    return stats


def _write_jsonl(path: Path, page: pd.DataFrame) -> None:
    """One JSON object per user (see homerank.homepage.export), written to a temp path and renamed."""
    with atomic_path(path) as tmp, open(tmp, "w") as handle:
        for record in page_records(page):
            handle.write(json.dumps(record) + "\n")
