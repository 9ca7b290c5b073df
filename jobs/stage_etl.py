"""Stage 1 — ETL: logs -> quarantine + clean interactions -> k-core -> encoded ids -> temporal split.

Reads: the input log (and optional catalogue). Writes into the run directory: ``quarantine/`` (rejected rows
with reason), ``etl/interactions/`` (all-time edges, original ids, per-event-type counts), ``etl/edges/`` (k-core
edges with user_index/item_index and ``split``) — Parquet datasets written partition by partition by the dask
workers (`homerank.engine.partitioned`) — ``user_index.parquet`` / ``item_index.parquet`` (mapping tables),
``etl/stats.json`` and ``etl/gates.json``. With ``profiles.last_session``, ``etl/last_session/`` (each user's
last-session items not bought there, `homerank.engine.sessions`); when the log has a ``query`` column,
``etl/searches/`` (the search rows by user, `homerank.engine.searches`; never edges).

Everything is built in a staging copy first; the data-quality gates compare it with the last accepted ETL and
only then is it published, so a failed gate (exit 3) leaves the accepted outputs untouched for every later stage
and the rejected ones in ``etl.rejected/``.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from typing import Any

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd

from homerank.engine import schema
from homerank.engine.backend import Backend
from homerank.engine.errors import GateError, HomerankError
from homerank.engine.ingest import IdDtype, Ingested, canonical_ids, ingest_events, read_catalogue
from homerank.engine.interactions import check_weights, weight_events
from homerank.engine.lightgcn_format import load_lightgcn
from homerank.engine.partitioned import (
    KnownDegrees,
    aggregate_by_user,
    degree_statistics,
    encode_and_split,
    id_tables,
    interactions_of,
    kcore_by_user,
    reindex,
    users_per_partition,
    write_partitions,
)
from homerank.engine.persisted import persist
from homerank.engine.profiles import profiles_by_user, segment_summary
from homerank.engine.searches import read_searches, searches_by_user, summaries_by_user, with_search_figures
from homerank.engine.sessions import last_sessions_by_user
from homerank.engine.split import SPLIT
from homerank.jobs.config import JobConfig
from homerank.jobs.gates import enforce, evaluate_gates
from homerank.jobs.rundir import (
    RunDir,
    publish_outputs,
    publish_parquet_parts,
    read_json,
    verify_dataset,
    write_json,
    write_parquet,
    write_parquet_dataset,
)
from homerank.jobs.warm_start import extend_id_maps, previous_run

log = logging.getLogger(__name__)

LIGHTGCN_EVENT = "interaction"  # the one event type of the lightgcn format (pairs carry no type)


def _split_counts(edges: pd.DataFrame) -> dict[str, int]:
    counts = edges[SPLIT].value_counts()
    return {name: int(counts.get(name, 0)) for name in ("train", "valid", "test")}


ETL_OUTPUTS = ("quarantine", "interactions", "edges", "profiles", "searches", "last_session", "catalogue",
               "user_index", "item_index", "feedback_stats")


def _finish(run: RunDir, staging: RunDir, config: JobConfig, stats: dict[str, Any]) -> dict[str, Any]:
    """Check the data-quality gates against the last accepted ETL (``etl/stats.json``), then publish.

    Passed: every staged output replaces the accepted one, the statistics last. Failed: nothing downstream
    sees the new data; the gate results go to ``etl/gates.json``, the rejected outputs to ``etl.rejected/`` for
    inspection, and `GateError` (exit 3) is raised."""
    previous = read_json(run.etl_stats) if run.etl_stats.exists() else None
    stats["gates"] = evaluate_gates(stats, previous, config.gates)
    log.info("etl: %s", {k: stats[k] for k in ("rows", "kcore", "split")})
    write_json(run.gates, {"accepted": all(g["passed"] for g in stats["gates"]), "gates": stats["gates"],
                           "compared_with": "etl/stats.json of the last accepted ETL" if previous else None})
    try:
        enforce(stats["gates"])
    except GateError:
        write_json(staging.etl_stats, stats)
        shutil.rmtree(run.etl_rejected, ignore_errors=True)
        os.replace(staging.root, run.etl_rejected)
        raise
    publish_outputs(staging, run, ETL_OUTPUTS)
    write_json(run.etl_stats, stats)
    shutil.rmtree(staging.root, ignore_errors=True)
    shutil.rmtree(run.etl_rejected, ignore_errors=True)
    return stats


def run_lightgcn_etl(input_path: str, run: RunDir, config: JobConfig) -> dict[str, Any]:
    """ETL for the ``lightgcn`` format: the split is given; ids are already dense indices."""
    started = time.perf_counter()
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
    write_parquet_dataset(run.interactions, interactions.reset_index(drop=True))
    write_parquet_dataset(run.edges, edges)
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
    return stats


def _label(input_path: str | list[str]) -> str:
    """The input as messages name it: the path, or the paths joined by ", "."""
    return input_path if isinstance(input_path, str) else ", ".join(input_path)


def run_etl(input_path: str | list[str], run: RunDir, config: JobConfig, backend: Backend) -> dict[str, Any]:
    """Every output is built in a staging copy of the run directory; the data-quality gates then decide, against
    the last accepted ETL, whether it is published (`_finish`)."""
    previous_run(config, run)  # a bad warm_start.previous_run is refused before anything is built
    staging = RunDir(run.etl_staging)
    shutil.rmtree(staging.root, ignore_errors=True)
    staging.ensure()
    try:
        if config.ingest.format == "lightgcn":
            if config.warm_start.previous_run is not None:
                raise HomerankError("warm_start.previous_run: the lightgcn format's ids are given indices, there are "
                                    "no id maps to extend; warm-start a run made from a Parquet/CSV log")
            if not isinstance(input_path, str):
                raise HomerankError("--input: the lightgcn format reads one folder (train.txt, test.txt); give one "
                                    "--input")
            stats = run_lightgcn_etl(input_path, staging, config)
        else:
            stats = _partitioned_etl(input_path, staging, config, backend)
    except GateError:  # a data problem: keep what was built (the quarantine above all) for inspection
        shutil.rmtree(run.etl_rejected, ignore_errors=True)
        os.replace(staging.root, run.etl_rejected)
        raise
    except BaseException:
        shutil.rmtree(staging.root, ignore_errors=True)
        raise
    return _finish(run, staging, config, stats)


def _write_searches(ingested: Ingested, run: RunDir, config: JobConfig) -> tuple[dict[str, Any], dd.DataFrame | None]:
    """The search rows ingest wrote per piece, range-partitioned by user, ordered and de-duplicated
    (`homerank.engine.searches`), written into ``run.searches``; returns their stats and the searches by user
    (persisted on the workers, for the profiles' search figures; None without any search)."""
    assert ingested.searches is not None
    found = read_searches(ingested.searches)
    rows = ingested.rows.get("searches", 0)
    stats = {"rows": rows, "kept": 0, "duplicates": 0, "users": 0, "quarantined": ingested.search_quarantined}
    if found is None or rows == 0:
        empty = pd.DataFrame({schema.USER: pd.Series(dtype="string" if config.ingest.pseudonymise_user_ids
                                                     else ingested.id_dtype),
                              schema.TS: pd.Series(dtype="datetime64[ns]"), schema.QUERY: pd.Series(dtype="string")})
        shutil.rmtree(run.searches_by_user_staging, ignore_errors=True)
        run.searches_by_user_staging.mkdir(parents=True)
        publish_parquet_parts(run.searches_by_user_staging, run.searches, empty)
        return stats, None
    by_user = persist(searches_by_user(found, rows, config.ingest.partition_rows))
    _, kept, users = dask.compute(write_partitions(by_user, run.searches_by_user_staging, compute=False),
                                  by_user.shape[0], users_per_partition(by_user).sum())
    publish_parquet_parts(run.searches_by_user_staging, run.searches, by_user._meta)
    stats.update(kept=int(kept), duplicates=rows - int(kept), users=int(users))
    log.info("etl: searches %s", stats)
    return stats, by_user


def _write_profiles(events: dd.DataFrame, core: dd.DataFrame, catalogue: pd.DataFrame | None, id_dtype: IdDtype,
                    event_types: list[str], ref_time: pd.Timestamp, run: RunDir, config: JobConfig,
                    searches: dd.DataFrame | None = None) -> dict[str, Any]:
    """Shopper profiles (`homerank.engine.profiles`) written partition by partition into ``run.profiles``, with the
    users' search figures (`homerank.engine.searches.with_search_figures`) from ``searches`` (by user) when the log
    has any; returns the small summary for the ETL stats and the report."""
    items = None
    if catalogue is not None:  # the catalogue's ids in the log's form, so that they join
        items = catalogue.assign(**{schema.ITEM: canonical_ids(catalogue[schema.ITEM], id_dtype)[0]})
        items = items.drop_duplicates(schema.ITEM)
    settings = config.profiles
    profiles, segments = profiles_by_user(events, core, items, event_types, ref_time, top=settings.top_categories,
                                          gap_minutes=settings.session_gap_minutes, segments=settings.segments,
                                          seed=config.seed, sample_users=settings.sample_users)
    figures = summaries_by_user(searches, settings.top_query_terms) if searches is not None else None
    profiles = persist(with_search_figures(profiles, figures))
    _, warm, users = dask.compute(write_partitions(profiles, run.profiles_staging, compute=False),
                                  profiles["warm"].sum(), profiles.shape[0])
    publish_parquet_parts(run.profiles_staging, run.profiles, profiles._meta)
    summary = {"users": int(users), "warm": int(warm), "cold": int(users) - int(warm),
               "segments": segment_summary(profiles)}
    if figures is not None:
        summary["searchers"] = int((profiles["n_searches"] > 0).sum().compute())
    return summary


def _partitioned_etl(input_path: str | list[str], run: RunDir, config: JobConfig, backend: Backend) -> dict[str, Any]:
    """Ingest, then the user-partitioned graph of `homerank.engine.partitioned`; writes into ``run`` (staging)."""
    started = time.perf_counter()
    event_types = [t.strip().lower() for t in config.ingest.event_types]
    check_weights(config.interactions.event_weights, event_types)
    unknown_exclusions = [t for t in config.rank.exclude_event_types if t not in event_types]
    if unknown_exclusions:
        raise HomerankError(f"rank.exclude_event_types: {unknown_exclusions[0]!r} is not in ingest.event_types")
    with backend.dask_config():
        ingested = ingest_events(input_path, config.ingest, backend, config.ingest.id_dtype, run.quarantine_staging,
                                 run.searches_staging, config.cluster.intermediates, run.root / "intermediates")
        try:
            return _etl_after_ingest(ingested, input_path, run, config, backend, event_types, started)
        finally:
            ingested.intermediates.close()


def _etl_after_ingest(ingested: Ingested, input_path: str | list[str], run: RunDir, config: JobConfig,
                      backend: Backend, event_types: list[str], started: float) -> dict[str, Any]:
    """`_partitioned_etl` from the ingested events on: aggregation, k-core, profiles, encode and split, outputs."""
    with backend.dask_config():
        publish_parquet_parts(run.quarantine_staging, run.quarantine, pd.DataFrame(
            columns=[schema.REASON, schema.SOURCE_FILE, schema.SOURCE_ROW]))
        if ingested.rows["kept"] == 0:
            raise GateError(f"{_label(input_path)}: no valid rows left after validation: all "
                            f"{ingested.rows['in']} rows were quarantined (reasons in etl.rejected/quarantine/)")
        log.info("etl: ingest done at %.1fs", time.perf_counter() - started)
        by_user = ingested.events  # already partitioned by user
        ref_time = ingested.newest
        # not persisted: a cheap column recomputed by each step that reads it, never a second copy of the events
        weighted = weight_events(by_user, config.interactions.event_weights, config.interactions.half_life_days,
                                 ref_time)
        intermediates = ingested.intermediates  # the all-time edges are kept where the events are
        all_edges, _ = intermediates.keep(aggregate_by_user(weighted, event_types), "edges-all-time", count=False)
        # the k-core's first check (G_0's size, degrees and users) in the same pass as the interactions' write
        _, degrees = dask.compute(write_partitions(interactions_of(all_edges), run.interactions_staging,
                                                   compute=False), degree_statistics(all_edges))
        degrees = KnownDegrees(*degrees)
        edges_all_time = int(degrees.count)
        users_all_time = int(backend.to_host(degrees.users[1]).sum())  # the users of each partition, summed
        items_all_time = len(degrees.item_degree)
        publish_parquet_parts(run.interactions_staging, run.interactions, interactions_of(all_edges)._meta)
        log.info("etl: %d user partitions, events weighted and aggregated at %.1fs", by_user.npartitions,
                 time.perf_counter() - started)
        kcore = kcore_by_user(all_edges, config.interactions.min_user_interactions,
                              config.interactions.min_item_interactions, known=degrees,
                              persist_result=not intermediates.on_disk)
        core, rounds, core_edges = kcore.edges, kcore.rounds, kcore.count
        log.info("etl: k-core (%d rounds) done at %.1fs", rounds, time.perf_counter() - started)
        del all_edges  # the k-core edges carry on: the workers drop the all-time edges (memory, spill) before the split
        if core_edges == 0:
            raise GateError(
                f"interactions: the k-core filter left none of the {edges_all_time} (user, item) pairs; lower "
                "interactions.min_user_interactions / min_item_interactions"
            )
        catalogue = read_catalogue(config.ingest.catalogue) if config.ingest.catalogue else None
        search_stats, searches = None, None
        if ingested.searches is not None:  # searches are never events: their own dataset, figures for the profiles
            search_stats, searches = _write_searches(ingested, run, config)
            log.info("etl: searches written at %.1fs", time.perf_counter() - started)
        profile_stats = None
        if config.profiles.enabled:
            profile_stats = _write_profiles(by_user, core, catalogue, ingested.id_dtype, event_types, ref_time, run,
                                            config, searches)
            log.info("etl: shopper profiles written at %.1fs", time.perf_counter() - started)
        user_index, item_index, partition_users = id_tables(core, items=kcore.item_degree.index, users=kcore.users)
        edges = encode_and_split(core, weighted, item_index, partition_users, config.split, event_types)
        warm = None
        previous = previous_run(config, run)
        if previous is not None:  # the split above used the natural indices; the edges get the extended ones
            user_index, item_index, user_remap, item_remap, warm = extend_id_maps(previous, user_index, item_index)
            edges = reindex(edges, user_remap, item_remap)
        writes = [write_partitions(edges, run.edges_staging, compute=False), edges[SPLIT].value_counts(split_out=1)]
        if config.profiles.last_session:  # computed from the same user partitions, in the same pass as the edges
            sessions = last_sessions_by_user(by_user, event_types, config.profiles.session_gap_minutes)
            writes += [write_partitions(sessions, run.last_session_staging, compute=False), sessions.shape[0]]
        _, split_counts, *session_counts = dask.compute(*writes)
        split_counts = backend.to_host(split_counts)
        publish_parquet_parts(run.edges_staging, run.edges, edges._meta)
        if config.profiles.last_session:
            publish_parquet_parts(run.last_session_staging, run.last_session, sessions._meta)
        log.info("etl: encoded, split and written at %.1fs", time.perf_counter() - started)
    write_parquet(run.user_index, user_index)
    write_parquet(run.item_index, item_index)
    catalogue_rows = None
    if catalogue is not None:
        write_parquet(run.catalogue, catalogue)
        catalogue_rows = len(catalogue)
    feedback = None
    if previous is not None:
        feedback = _write_feedback(previous, ingested, event_types, run, config)
    return {
        "input": input_path,
        "files": len(ingested.files),
        "partitions": {"input": ingested.partitions, "by_user": by_user.npartitions},
        "id_dtype": ingested.id_dtype,
        "rows": ingested.rows,
        "quarantine_reasons": ingested.reasons,
        "reference_time": str(ref_time),
        "edges_all_time": int(edges_all_time),
        "users_all_time": int(users_all_time),
        "items_all_time": int(items_all_time),
        "kcore": {"rounds": rounds, "edges": core_edges, "users": len(user_index), "items": len(item_index)},
        "split": {name: int(split_counts.get(name, 0)) for name in ("train", "valid", "test")},
        "catalogue_rows": catalogue_rows,
        "profiles": profile_stats,
        **({"searches": search_stats} if search_stats is not None else {}),
        **({"last_session_items": int(session_counts[1])} if session_counts else {}),
        **({"warm_start": warm} if warm is not None else {}),
        **({"feedback": feedback} if feedback is not None else {}),
        "seconds": round(time.perf_counter() - started, 3),
    }


def _write_feedback(previous: RunDir, ingested: Ingested, event_types: list[str], run: RunDir,
                    config: JobConfig) -> dict[str, Any] | None:
    """Click-through and position bias of the previous run's homepage (`homerank.engine.feedback`): the input files
    with a ``run_id`` column are the feedback log, matched to ``previous``'s ``impressions/``; written to
    ``feedback/stats.json``. Returns its totals for the ETL stats, None (and a log line) when either is missing."""
    from homerank.engine.feedback import RUN_ID, feedback_stats
    from homerank.engine.ingest import discover_files, read_columns
    from homerank.engine.privacy import pseudonym_key

    inputs = [found for path in ingested.files for found in discover_files(path, config.ingest.format)]
    feedback_files = [(file.path, file.format) for file in inputs if RUN_ID in read_columns(file)]
    if not feedback_files or not (previous.impressions / "_SUCCESS.json").is_file():
        log.info("etl: no feedback statistics (%s)", "no input file has a run_id column" if not feedback_files
                 else f"{previous.impressions} has no impressions")
        return None
    verify_dataset(previous.impressions)
    parts = sorted(str(part) for part in previous.impressions.glob("part-*.parquet"))
    key = pseudonym_key() if config.ingest.pseudonymise_user_ids else None
    stats = feedback_stats(parts, feedback_files, ingested.id_dtype, event_types, key)
    stats = {"previous_run": str(previous.root), "feedback_files": [path for path, _ in feedback_files], **stats}
    write_json(run.feedback_stats, stats)
    log.info("etl: feedback on %s's homepage: %s", previous.root, stats["totals"])
    return {"feedback_files": len(feedback_files), "matched_events": stats["matched_events"],
            "unmatched_events": stats["unmatched_events"], **stats["totals"]}
