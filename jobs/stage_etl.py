"""Stage 1 — ETL: logs -> quarantine + clean interactions -> k-core -> encoded ids -> temporal split.

Reads: the input log (and optional catalogue). Writes into the run directory:
``quarantine/`` (rejected rows with reason), ``etl/interactions.parquet`` (all-time edges, original ids,
per-event-type counts), ``etl/edges.parquet`` (k-core edges with user_index/item_index and ``split``),
``user_index.parquet`` / ``item_index.parquet`` (mapping tables), ``etl/stats.json``.
"""

from __future__ import annotations

import logging
import shutil
import time
from typing import Any

import numpy as np
import pandas as pd

from homerank.engine import schema
from homerank.engine.backend import Backend
from homerank.engine.encode import encode_edges, fit_index
from homerank.engine.errors import GateError, HomerankError
from homerank.engine.ingest import ingest_events, read_catalogue
from homerank.engine.interactions import aggregate_edges, check_weights, sort_edges, weight_events
from homerank.engine.kcore import kcore_filter
from homerank.engine.lightgcn_format import load_lightgcn
from homerank.engine.split import CUTOFF, SPLIT, temporal_split, train_event_filter
from homerank.jobs.config import JobConfig
from homerank.jobs.gates import enforce, evaluate_gates
from homerank.jobs.rundir import (
    RunDir,
    publish_parquet_parts,
    read_json,
    write_json,
    write_parquet,
    write_parquet_dataset,
)

log = logging.getLogger(__name__)

LIGHTGCN_EVENT = "interaction"  # the one event type of the lightgcn format (pairs carry no type)


def _split_counts(edges: pd.DataFrame) -> dict[str, int]:
    counts = edges[SPLIT].value_counts()
    return {name: int(counts.get(name, 0)) for name in ("train", "valid", "test")}


def _previous_stats(run: RunDir) -> dict[str, Any] | None:
    return read_json(run.etl_stats) if run.etl_stats.exists() else None


def _finish(run: RunDir, config: JobConfig, stats: dict[str, Any], previous: dict[str, Any] | None
            ) -> dict[str, Any]:
    """Write the statistics, then check the data-quality gates (raises GateError before any training)."""
    stats["gates"] = evaluate_gates(stats, previous, config.gates)
    write_json(run.etl_stats, stats)
    log.info("etl: %s", {k: stats[k] for k in ("rows", "kcore", "split")})
    enforce(stats["gates"])
    return stats


def run_lightgcn_etl(input_path: str, run: RunDir, config: JobConfig) -> dict[str, Any]:
    """ETL for the ``lightgcn`` format: the split is given; ids are already dense indices."""
    started = time.perf_counter()
    previous = _previous_stats(run)
    edges, num_users, num_items, valid_from_file = load_lightgcn(input_path, config.split.valid, config.seed)
    edges[schema.USER] = edges[schema.USER_INDEX]
    edges[schema.ITEM] = edges[schema.ITEM_INDEX]
    edges[schema.WEIGHT] = 1.0
    user_index = pd.DataFrame({schema.USER: np.arange(num_users), schema.USER_INDEX: np.arange(num_users)})
    item_index = pd.DataFrame({schema.ITEM: np.arange(num_items), schema.ITEM_INDEX: np.arange(num_items)})
    # every known pair is "an interaction" with no event type: ranking excludes all of them
    interactions = edges.drop_duplicates([schema.USER, schema.ITEM])[[schema.USER, schema.ITEM, schema.WEIGHT]].assign(
        **{schema.count_column(LIGHTGCN_EVENT): 1})
    write_parquet_dataset(run.quarantine, pd.DataFrame(columns=[schema.REASON]))
    write_parquet(run.interactions, interactions.reset_index(drop=True))
    write_parquet(run.edges, edges)
    write_parquet(run.user_index, user_index)
    write_parquet(run.item_index, item_index)
    rows = len(edges)
    stats = {
        "input": input_path,
        "format": "lightgcn",
        "files": 3 if valid_from_file else 2,
        "id_dtype": "int64",
        "rows": {"in": rows, "kept": rows, "quarantined": 0, "duplicates": 0},
        "quarantine_reasons": {},
        "reference_time": None,
        "edges_all_time": len(interactions),
        "users_all_time": num_users,
        "items_all_time": num_items,
        "kcore": {"rounds": 0, "edges": rows, "users": num_users, "items": num_items},
        "split": _split_counts(edges),
        "valid_source": "valid.txt" if valid_from_file else "random slice of train.txt",
        "catalogue_rows": None,
        "seconds": round(time.perf_counter() - started, 3),
    }
    return _finish(run, config, stats, previous)


def run_etl(input_path: str, run: RunDir, config: JobConfig, backend: Backend) -> dict[str, Any]:
    if config.ingest.format == "lightgcn":
        return run_lightgcn_etl(input_path, run, config)
    started = time.perf_counter()
    previous = _previous_stats(run)
    event_types = [t.strip().lower() for t in config.ingest.event_types]
    check_weights(config.interactions.event_weights, event_types)
    unknown_exclusions = [t for t in config.rank.exclude_event_types if t not in event_types]
    if unknown_exclusions:
        raise HomerankError(f"rank.exclude_event_types: {unknown_exclusions[0]!r} is not in ingest.event_types")
    with backend.dask_config():
        staging = run.quarantine_staging
        shutil.rmtree(staging, ignore_errors=True)
        ingested = ingest_events(input_path, config.ingest, backend, config.ingest.id_dtype, staging)
        publish_parquet_parts(staging, run.quarantine, pd.DataFrame(columns=[schema.REASON, schema.SOURCE_FILE,
                                                                             schema.SOURCE_ROW]))
        if ingested.rows["kept"] == 0:
            raise GateError(f"{input_path}: no valid rows left after validation: all {ingested.rows['in']} rows were "
                            f"quarantined (reasons in {run.quarantine})")
        events = ingested.events
        ref_time = events[schema.TS].max().compute()
        weighted = weight_events(events, config.interactions.event_weights, config.interactions.half_life_days,
                                 ref_time)
        all_edges = sort_edges(backend.to_host(aggregate_edges(weighted, event_types).compute()))
        write_parquet(run.interactions, all_edges)
        core, rounds = kcore_filter(all_edges, config.interactions.min_user_interactions,
                                    config.interactions.min_item_interactions)
        if len(core) == 0:
            raise GateError(
                f"interactions: the k-core filter left none of the {len(all_edges)} (user, item) pairs; lower "
                "interactions.min_user_interactions / min_item_interactions"
            )
        user_index = fit_index(core[schema.USER], schema.USER, schema.USER_INDEX)
        item_index = fit_index(core[schema.ITEM], schema.ITEM, schema.ITEM_INDEX)
        encoded = encode_edges(core, user_index, item_index)
        split_edges, cutoffs = temporal_split(encoded, config.split)
        train_keys = split_edges.loc[split_edges[SPLIT] == "train", [schema.USER, schema.ITEM, schema.USER_INDEX]]
        train_keys = train_keys.merge(cutoffs, on=schema.USER_INDEX, how="left").drop(columns=[schema.USER_INDEX])
        train_keys[CUTOFF] = train_keys[CUTOFF].astype("datetime64[ns]")
        train_events = train_event_filter(weighted, train_keys)
        train_weights = backend.to_host(aggregate_edges(train_events, event_types).compute())
    value_columns = [schema.WEIGHT, schema.FIRST_TS, schema.LAST_TS, *(schema.count_column(t) for t in event_types)]
    train_rows = split_edges[split_edges[SPLIT] == "train"].drop(columns=value_columns)
    train_rows = train_rows.merge(train_weights, on=[schema.USER, schema.ITEM], how="left")
    if train_rows[schema.WEIGHT].isna().any():  # pragma: no cover - every train edge has an event <= cutoff
        raise AssertionError("training edge without events before its cutoff")
    held_out = split_edges[split_edges[SPLIT] != "train"]
    edges = pd.concat([train_rows, held_out[train_rows.columns]], ignore_index=True)
    edges = edges.sort_values([schema.USER_INDEX, schema.ITEM_INDEX], kind="stable").reset_index(drop=True)
    write_parquet(run.edges, edges)
    write_parquet(run.user_index, user_index)
    write_parquet(run.item_index, item_index)
    catalogue_rows = None
    if config.ingest.catalogue:
        catalogue = read_catalogue(config.ingest.catalogue)
        write_parquet(run.catalogue, catalogue)
        catalogue_rows = len(catalogue)
    stats = {
        "input": input_path,
        "files": len(ingested.files),
        "partitions": ingested.partitions,
        "id_dtype": ingested.id_dtype,
        "rows": ingested.rows,
        "quarantine_reasons": ingested.reasons,
        "reference_time": str(ref_time),
        "edges_all_time": len(all_edges),
        "users_all_time": int(all_edges[schema.USER].nunique()),
        "items_all_time": int(all_edges[schema.ITEM].nunique()),
        "kcore": {"rounds": rounds, "edges": len(core), "users": len(user_index), "items": len(item_index)},
        "split": _split_counts(edges),
        "catalogue_rows": catalogue_rows,
        "seconds": round(time.perf_counter() - started, 3),
    }
    return _finish(run, config, stats, previous)
