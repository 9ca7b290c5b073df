"""Frames and arrays in, pages out: the catalogue, the page-wide signals, then the users in blocks: each block's rows
in section order (`homerank.homepage.block_pages`, array operations over the block; `PageBuilder` user by user when
merchandising rules are active), each slot's explanation (`homerank.homepage.explain`), the page-rule check and the
page-quality metrics summed block by block."""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from homerank.engine import schema
from homerank.engine.memory import release_free_memory
from homerank.engine.split import SPLIT
from homerank.homepage.block_pages import BlockPages
from homerank.homepage.candidates import CandidateFn
from homerank.homepage.catalogue import VECTOR_SOURCES, Catalogue, build_catalogue, item_vectors
from homerank.homepage.config import HomepageConfig
from homerank.homepage.explain import Explainer
from homerank.homepage.merchandising import Merchandising, load_merchandising
from homerank.homepage.rows import OUTPUT_COLUMNS, PAGE_COLUMNS, PageBuilder
from homerank.homepage.sections import SECTION_KINDS, section_title
from homerank.homepage.signals import (
    PageSignals,
    collect_signals,
    history_signals,
    profile_signals,
    viewed_item_neighbours,
)
from homerank.homepage.tally import BlockSums, PageTally

log = logging.getLogger(__name__)


@dataclass
class Homepage:
    """``page``: one row per slot (``OUTPUT_COLUMNS``), grouped by user, rows in section order (no rows when the
    blocks went to an ``on_block`` callback); ``stats``: what ``homepage_stats.json`` holds (users, rows, sections,
    cold_users, rule_check, diversity, merchandising, quality, item_vectors, signals)."""

    page: pd.DataFrame
    stats: dict[str, Any]


def build_pages(candidate_items: np.ndarray | CandidateFn, candidate_scores: np.ndarray | None,
                item_embeddings: torch.Tensor,
                user_embeddings: torch.Tensor, interactions: pd.DataFrame, edges: pd.DataFrame,
                user_index: pd.DataFrame, item_index: pd.DataFrame, catalogue_items: pd.DataFrame | None,
                reference_time: pd.Timestamp, settings: HomepageConfig,
                rankings: pd.DataFrame | Iterable[pd.DataFrame] | None = None,
                on_block: Callable[[int, pd.DataFrame], None] | None = None,
                profiles: pd.DataFrame | None = None,
                cold_items: tuple[pd.Series, np.ndarray] | None = None,
                searches: pd.DataFrame | None = None, sessions: pd.DataFrame | None = None,
                fork: bool = True, first_seen: pd.Timestamp | None = None,
                on_setup_peak_past: Callable[[], Any] | None = None) -> Homepage:
    """One page per user of ``interactions`` (which needs ``last_ts``) and per user of ``searches``, in user id order.

    ``candidate_items``/``candidate_scores`` (U, k): the model's top items per user embedding row (model item
    index), best first; ``user_embeddings`` (U, d) and ``item_embeddings`` (num_items, d) the learned vectors;
    ``user_index``/``item_index`` map ids to those rows; ``catalogue_items`` is the catalogue frame (None
    without one); ``reference_time`` is the newest event of the log; ``rankings`` (user_id, item_id), the plain
    top-K lists (a frame, or frames read one at a time, each holding whole lists), is the baseline of the quality
    metrics when given; ``profiles``, the shopper profiles (user_id,
    segment, segment_name, top_category_k, top_category_share_k; None without them), give users without a model
    embedding their segment's favourites, the titles their profile fields and the explanations category shares;
    ``cold_items`` (item ids (n,), vectors (n, d)), the train stage's content-only embeddings of catalogue items
    outside the graph (None without them), are the vectors of those items in place of their category and price
    band's mean vector (`homerank.homepage.catalogue.item_vectors`). ``searches`` (user_id, timestamp, query: the
    ETL's etl/searches/) and ``sessions`` (its etl/last_session/), None without them, feed the related_to_searches and
    continue_shopping rows; a user who searched but has no interaction gets a page too (from fallbacks and searches).

    ``interactions`` and ``edges`` are not used once the page-wide signals are built: a caller that hands over its
    only references (as the homepage stage does) lets them be freed before the blocks are built. ``first_seen``, the
    log's earliest interaction, is for a caller whose ``interactions`` lack ``first_ts`` (the stage reads its least
    value alone, not the column: `Explainer`). ``on_setup_peak_past`` is called once the page-wide signals are made
    and the interactions dropped, before the item neighbours' search and the blocks (the homepage stage turns glibc's
    heap reuse back on there: `homerank.engine.memory.large_allocations_mapped`).

    ``candidate_items`` may instead be a function of model rows (`homerank.homepage.candidates.CandidateFn`, with
    ``candidate_scores`` None): each block then scores only its own users' candidates. A function with a
    ``prepare()`` method has it called once the page-wide signals are made, before the blocks (e.g. to load an item
    index only after the setup's peak: `homerank.jobs.stage_homepage.DeferredIndexCandidates`).

    Users are paged in blocks of at most ``settings.block_users`` (evened out, `even_block_size`), built in
    ``settings.processes`` forked worker processes (`block_processes`; one, in this process, when ``fork`` is off,
    e.g. on a GPU, where CUDA does not survive a fork); each block's rows go to ``on_block(block number, rows)`` in
    the process that built them as soon as the block is built (the returned ``page`` is then empty: nothing keeps
    every user's rows), or come back and are concatenated in block order into the returned ``page`` without it. The
    stats are summed block by block, in block order (`homerank.homepage.tally`); ``item_vectors`` counts the new
    arrivals and the catalogue items by the source of their vector."""
    catalogue = build_catalogue(catalogue_items, interactions, item_index, edges, reference_time, settings)
    # what the pages read from the edges (the segments' favourites, the test rows the quality metrics score), then
    # the edges go (0.43 GB at 3 * 10^7 events; freed when the caller handed them over, as the homepage stage does)
    profile_fields = profile_signals(profiles, edges, catalogue)
    test_rows = edges.loc[(edges[SPLIT] == "test").to_numpy(), [schema.USER, schema.ITEM, SPLIT]]
    del edges
    # the searches' and last sessions' signals, then their tables go (0.08 GB at 3 * 10^7 events), before the
    # interactions' tables are made (the explanations' and the signals': the stage's peak)
    history_fields = history_signals(searches, sessions, catalogue, reference_time, settings)
    del searches, sessions
    vectors, vector_source = item_vectors(catalogue, item_embeddings, cold_items)
    unit_vectors = F.normalize(vectors, dim=1).numpy()
    # the explanations' per-interaction tables (their setup sorts every interaction: the stage's peak) before the
    # signals' item neighbours exist; the signals are attached once made
    explainer = Explainer(catalogue, None, interactions, profiles, unit_vectors, reference_time, settings,
                          first_seen)
    signals = collect_signals(catalogue, vectors, interactions, candidate_items, candidate_scores, user_embeddings,
                              item_embeddings, user_index, reference_time, settings, profiles, None, vector_source,
                              profile_fields=profile_fields, with_neighbours=False, history_fields=history_fields)
    explainer.signals = signals
    users = interactions[schema.USER].unique()
    # the page-wide signals and the explainer hold what the blocks need: the interactions go (0.8 GB at 3 * 10^7
    # events) before the item neighbours' table and search (0.5 GB there) and before the workers fork, and so do the
    # profiles as read (0.06 GB there), once a caller hands over its references
    del interactions, profiles, history_fields
    if on_setup_peak_past is not None:
        on_setup_peak_past()
    signals.neighbours = viewed_item_neighbours(signals, item_embeddings, settings.candidates)
    if signals.searches is not None:  # users who only searched have a page too
        users = pd.Index(users).union(signals.searches.queries.users).to_numpy()
    users = np.sort(users)
    merchandising = None
    if settings.merchandising:
        merchandising = load_merchandising(settings.merchandising, catalogue.item_ids, catalogue.category,
                                           [section.kind for section in settings.sections], reference_time)
        log.info("merchandising: %s", merchandising.stats)
    tally = PageTally(catalogue, signals, users, test_rows, merchandising, settings)
    # boosts and pins re-rank and reserve slots per user: pages with active rules keep the user-by-user builder
    vectorised = not (merchandising and (merchandising.boosts or merchandising.pins))
    blocks = BlockPages(signals, settings, unit_vectors) if vectorised else None
    processes = block_processes(settings.processes, max(1, -(-len(users) // settings.block_users)), fork)
    pager = _BlockPager(users, even_block_size(len(users), settings.block_users), signals, blocks,
                        explainer, tally, unit_vectors, merchandising, settings, on_block)
    prepare = getattr(candidate_items, "prepare", None)
    if callable(prepare):  # a candidate function that loads what it searches once asked (an item index): now,
        prepare()  # after the setup's peak, and before the fork, so that the block workers share it
    if processes > 1:  # the setup's freed heap pages go back before the workers fork (else each worker's RSS
        release_free_memory()  # counts them: at 3 * 10^7 events 2.69 -> 2.46 GiB per worker)
    kept = [page for page in _merged_in_block_order(_run_blocks(pager, processes), tally) if on_block is None]
    page = pd.concat(kept, ignore_index=True) if kept else pd.DataFrame(columns=OUTPUT_COLUMNS)
    return Homepage(page, {**tally.stats(rankings), "item_vectors": _vector_counts(vector_source, signals),
                           "signals": _signal_counts(signals)})


def _merged_in_block_order(results: Iterable[tuple[int, pd.DataFrame, BlockSums]], tally: PageTally
                            ) -> Iterator[pd.DataFrame]:
    """Each block's rows in block order, its sums merged into ``tally`` in block order as soon as the blocks before
    it are (so the float sums do not depend on which block finished first), from ``results`` in any order: only
    the blocks that finished ahead of an unfinished one wait (each block's sums hold a (C,) exposure array: at
    3 * 10^7 events 74 blocks' sums kept until the last one took 0.1 GB in the parent)."""
    waiting: dict[int, tuple[pd.DataFrame, BlockSums]] = {}
    following = 0
    for number, page, sums in results:
        waiting[number] = (page, sums)
        while following in waiting:
            page, sums = waiting.pop(following)
            tally.merge(sums)
            following += 1
            yield page
    for number in sorted(waiting):  # pragma: no cover - every block number from 0 comes back
        page, sums = waiting.pop(number)
        tally.merge(sums)
        yield page


def block_processes(setting: int | None, blocks: int, fork: bool = True) -> int:
    """How many worker processes build the blocks: ``setting`` (None: one per CPU core this process may use), at
    most one per block, and 1 (in this process) when ``fork`` is off or the platform cannot fork."""
    if not fork or "fork" not in multiprocessing.get_all_start_methods():
        return 1
    wanted = setting if setting is not None else len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else (os.cpu_count() or 1)
    return max(1, min(wanted, blocks))


def even_block_size(users: int, most: int) -> int:
    """Users per block: as few blocks as ``most`` users per block allows, of equal size (60,000 users, 8,192 at most:
    8 blocks of 7,500 instead of 7 of 8,192 and one of 2,656, so no worker process ends on a full block while the
    other has only the short one). It does not depend on the number of processes: any ``homepage.processes`` builds
    the same blocks, so the same model candidate batches and the same output bytes."""
    return max(1, -(-users // max(1, -(-users // most))))


@dataclass
class _BlockPager:
    """Everything one block of users needs, built once in the parent; `page` turns block ``number`` into its rows,
    the rows' stats (`BlockSums`) and hands the rows to ``on_block`` (in the process that built them)."""

    users: np.ndarray
    block_users: int
    signals: PageSignals
    blocks: BlockPages | None
    explainer: Explainer
    tally: PageTally
    unit_vectors: np.ndarray
    merchandising: Merchandising | None
    settings: HomepageConfig
    on_block: Callable[[int, pd.DataFrame], None] | None

    @property
    def count(self) -> int:
        return max(1, -(-len(self.users) // self.block_users))

    def page(self, number: int) -> tuple[int, pd.DataFrame, BlockSums]:
        block = self.users[number * self.block_users : (number + 1) * self.block_users]
        # each builder makes the block's own signals: the model's candidates and new-arrival scores of its users
        if self.blocks is not None:
            page = self.blocks.build(block)
        else:
            page = _pages_one_by_one(block, self.signals.catalogue, self.signals, self.settings, self.unit_vectors,
                                     self.merchandising)
        explanation, evidence = self.explainer.explain(page)
        page = page.assign(explanation=explanation)[OUTPUT_COLUMNS]
        sums = self.tally.sums(page, block, evidence)
        if self.on_block is not None:
            self.on_block(number, page)
            page = page.iloc[:0].copy()  # a fresh empty frame: a slice would keep the whole block's rows alive
        log.debug("homepage: block %d of %d users, %d rows", number, len(block), sums.counts["rows"])
        return number, page, sums


_FORKED: _BlockPager | None = None  # the pager of the running build, inherited by the forked worker processes


def _forked_page(number: int) -> tuple[int, pd.DataFrame, BlockSums]:
    assert _FORKED is not None, "a block worker started outside build_pages"
    return _FORKED.page(number)


def _single_threaded(parent: int | None = None) -> None:
    """A forked block worker computes with one thread (the workers are the parallelism; a GNU OpenMP pool that the
    parent started must not be entered after the fork), and on Linux dies with the parent process ``parent``: a job
    killed mid-page (SIGKILL, out of memory) leaves no orphaned workers behind that hold their share of memory and
    the run directory's lock."""
    if parent is not None:
        _exit_with_parent(parent)
    torch.set_num_threads(1)
    try:
        import faiss

        faiss.omp_set_num_threads(1)
    except ImportError:  # faiss is optional where no index is built
        pass


def _exit_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this process when its parent exits (``prctl(PR_SET_PDEATHSIG)``), and exit now if the
    parent ``parent`` is already gone (it may die between the fork and this call). Nothing elsewhere."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux with glibc: workers end when the pool's pipe closes, as before
        return
    if os.getppid() != parent:
        os._exit(1)


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _run_blocks(pager: _BlockPager, processes: int) -> Iterator[tuple[int, pd.DataFrame, BlockSums]]:
    """Every block's (number, rows, sums): in this process, or in ``processes`` forked worker processes that
    inherit the pager (nothing large is pickled; each returns its block's rows only without ``on_block``, and its
    sums), in the order the blocks finish. A failed block raises here after the others are cancelled."""
    if processes <= 1:
        for number in range(pager.count):
            yield pager.page(number)
        return
    global _FORKED
    _FORKED = pager
    log.info("homepage: %d blocks of up to %d users in %d worker processes", pager.count, pager.block_users,
             processes)
    try:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(processes, mp_context=context, initializer=_single_threaded,
                                 initargs=(os.getpid(),)) as pool:
            # the blocks not yet done: a done future keeps its result (a block's sums hold a (C,) exposure array:
            # 87 MB for the 74 blocks at 3 * 10^7 events), so each is dropped once its result is taken
            pending = {pool.submit(_forked_page, number) for number in range(pager.count)}
            try:
                for done, future in enumerate(as_completed(list(pending)), start=1):
                    pending.discard(future)
                    result = future.result()
                    log.info("homepage: block %d done (%d of %d)", result[0] + 1, done, pager.count)
                    yield result
            finally:
                for future in pending:
                    future.cancel()
    finally:
        _FORKED = None


def _signal_counts(signals: PageSignals) -> dict[str, int]:
    """Users with recent searches (related_to_searches) and with last-session items (continue_shopping)."""
    return {"search_users": len(signals.searches.queries.users) if signals.searches is not None else 0,
            "last_session_users": len(signals.last_session.items.users) if signals.last_session is not None else 0}


def _vector_counts(vector_source: np.ndarray, signals: PageSignals) -> dict[str, dict[str, int]]:
    """How many new arrivals and catalogue items got their vector from each source (model, content, mean)."""
    def counts(codes: np.ndarray) -> dict[str, int]:
        found = np.bincount(codes, minlength=len(VECTOR_SOURCES))
        return {name: int(n) for name, n in zip(VECTOR_SOURCES, found, strict=True)}
    return {"new_arrivals": counts(vector_source[signals.new_positions]), "catalogue": counts(vector_source)}


def _pages_one_by_one(users: np.ndarray, catalogue: Catalogue, signals: PageSignals, settings: HomepageConfig,
                      unit_vectors: np.ndarray, merchandising: Merchandising | None) -> pd.DataFrame:
    """The rows of ``users`` by `PageBuilder`, one user and one row at a time (merchandising boosts and pins), from
    the page-wide ``signals`` made into the block's (`PageSignals.for_block`: the users' whole candidate lists and
    their new-arrival scores)."""
    signals = signals.for_block(users, whole=True)
    builder = PageBuilder(catalogue, settings, unit_vectors, merchandising)
    profile_values = signals.title_values(users)
    for line, user in enumerate(users.tolist()):
        used: set[int] = set()
        bought = set(signals.purchased.get(user, np.zeros(0, dtype=np.int64)).tolist())
        profile = {name: values[line] for name, values in profile_values.items()}
        for section in settings.sections:
            row = SECTION_KINDS[section.kind].candidates(user, signals)
            if row is not None:
                title = section_title(section, {**profile, **row.title_values}, row.segment_title)
                builder.fill(user, section, title, row.sources, used, bought)
    return pd.DataFrame(builder.rows, columns=PAGE_COLUMNS)
