"""Homepage in blocks of users: the array path (homepage/block_pages.py) gives the rows of the user-by-user
PageBuilder, a build in blocks of 3 users equals one block, and the stage publishes the parts with the manifest last
(a block that fails leaves the previous homepage as it was)."""

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from homerank.homepage import block_pages as block_pages_module
from homerank.homepage import blocks as blocks_module
from homerank.homepage import build as build_module
from homerank.homepage import candidates as candidates_module
from homerank.homepage.block_pages import BlockPages, best_first, capped_lists
from homerank.homepage.build import _pages_one_by_one, build_pages
from homerank.homepage.catalogue import build_catalogue, inductive_item_vectors
from homerank.homepage.config import HomepageConfig, SectionConfig
from homerank.homepage.signals import collect_signals


def _frames(seed: int = 0, users: int = 60, items: int = 120):
    """A random log: items in 6 categories (some out of stock, some new, some unknown to the model), users with
    views and purchases, a few cold users, and the model's candidates from random embeddings."""
    rng = np.random.default_rng(seed)
    now = pd.Timestamp("2026-03-10")
    item_ids = np.arange(1000, 1000 + items)
    catalogue = pd.DataFrame({
        "item_id": item_ids, "category": rng.choice(["A", "B", "C", "Coffee", "E", "F"], items),
        "title": [f"t{i}" for i in item_ids], "price": rng.uniform(1, 50, items),
        "created_at": now - pd.to_timedelta(rng.choice([1, 5, 400], items), unit="D"),
        "in_stock": rng.random(items) > 0.15})
    pairs = pd.DataFrame({"user_id": rng.integers(0, users, 1500), "item_id": rng.choice(item_ids[:100], 1500)})
    interactions = pairs.drop_duplicates().reset_index(drop=True)
    n = len(interactions)
    ts = now - pd.to_timedelta(rng.uniform(0, 20, n), unit="D")
    interactions = interactions.assign(weight=rng.uniform(0.5, 3, n), first_ts=ts, last_ts=ts,
                                       n_view=rng.integers(0, 3, n), n_purchase=(rng.random(n) < 0.2).astype(int))
    known_users = np.sort(interactions["user_id"].unique())[:-5]  # the last five users are cold
    known_items = np.sort(interactions["item_id"].unique())[:-10]  # ten logged items unknown to the model
    user_index = pd.DataFrame({"user_id": known_users, "user_index": np.arange(known_users.size)})
    item_index = pd.DataFrame({"item_id": known_items, "item_index": np.arange(known_items.size)})
    edges = (interactions.merge(user_index).merge(item_index)
             .assign(split=lambda f: np.where(rng.random(len(f)) < 0.2, "test", "train")))
    generator = torch.Generator().manual_seed(seed)
    user_emb = torch.randn(known_users.size, 8, generator=generator)
    item_emb = torch.randn(known_items.size, 8, generator=generator)
    scores, candidates = torch.topk(user_emb @ item_emb.T, 40, dim=1)
    return (candidates.numpy(), scores.numpy(), item_emb, user_emb, interactions, edges, user_index, item_index,
            catalogue, now)


def _page_signals(seed: int, settings: HomepageConfig):
    """`_frames` made into the page-wide signals: (catalogue, signals, unit item vectors, the users, sorted)."""
    (candidates, scores, item_emb, user_emb, interactions, edges, user_index, item_index, items,
     now) = _frames(seed)
    catalogue = build_catalogue(items, interactions, item_index, edges, now, settings)
    vectors = inductive_item_vectors(catalogue, item_emb)
    signals = collect_signals(catalogue, vectors, interactions, candidates, scores, user_emb, item_emb, user_index,
                              now, settings)
    return catalogue, signals, F.normalize(vectors, dim=1).numpy(), np.sort(interactions["user_id"].unique())


SETTINGS = [
    HomepageConfig(max_per_category=2, new_arrival_days=7, repeat_purchase_categories=["Coffee", "A"], candidates=40),
    HomepageConfig(diversity="mmr", mmr_pool_factor=3, new_arrival_days=7, candidates=40,
                   sections=[SectionConfig(kind="because_you_viewed", title="Like {item_title}", slots=4),
                             SectionConfig(kind="for_you", title="For you {category}", slots=7),
                             SectionConfig(kind="trending_in_category", title="Hot in {category}", slots=5),
                             SectionConfig(kind="buy_again", title="Again", slots=3),
                             SectionConfig(kind="new_arrivals", title="New", slots=5)]),
]


@pytest.mark.parametrize("settings", SETTINGS, ids=["category_cap", "mmr"])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("narrow", [False, True], ids=["default", "narrow_windows_sorted_sets"])
def test_block_rows_equal_the_user_by_user_builder(settings, seed, narrow, monkeypatch):
    if narrow:  # first windows of 2 entries (most rows widen), item sets as sorted keys instead of bit sets, new
        # arrivals cut to 3 per user (most rows are filled again from the whole list)
        monkeypatch.setattr(blocks_module, "FIRST_WINDOW", 0)
        monkeypatch.setattr(blocks_module, "MIN_WINDOW", 2)
        monkeypatch.setattr(blocks_module, "BITSET_BYTES", 0)
        monkeypatch.setattr(block_pages_module, "new_arrival_width", lambda section, settings: 3)
    catalogue, signals, unit, users = _page_signals(seed, settings)
    expected = _pages_one_by_one(users, catalogue, signals, settings, unit, None)
    got = BlockPages(signals, settings, unit).build(users)
    assert len(expected) > 5 * len(users)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected, check_dtype=False, rtol=1e-6)


@pytest.mark.parametrize("settings", SETTINGS, ids=["category_cap", "mmr"])
def test_blocks_of_three_users_equal_one_block(settings):
    frames = _frames(2)
    one = build_pages(*frames, settings.model_copy(update={"block_users": 10_000}))
    seen: list[pd.DataFrame] = []
    # in this process: a callback that appends to a list sees nothing from a forked worker
    blocks = build_pages(*frames, settings.model_copy(update={"block_users": 3, "processes": 1}),
                         on_block=lambda number, page: seen.append(page))
    assert len(seen) == -(-one.page["user_id"].nunique() // 3) and blocks.page.empty
    pd.testing.assert_frame_equal(pd.concat(seen, ignore_index=True), one.page)
    assert one.stats["rule_check"]["passed"]
    assert json.dumps(one.stats["rule_check"]) == json.dumps(blocks.stats["rule_check"])
    for key in ("users", "rows", "sections", "cold_users"):
        assert one.stats[key] == blocks.stats[key]
    for side, metrics in one.stats["quality"].items():
        assert blocks.stats["quality"][side] == pytest.approx(metrics)


@pytest.mark.parametrize("share", [1.0, 0.0])
@pytest.mark.parametrize("slack", [1, 3, 5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cut_neighbour_lists_give_the_rows_of_the_whole_lists(share, slack, seed, monkeypatch):
    """because_you_viewed first (the rows' blocked items are their purchases only: 0 to ~10), lists cut to
    cap + slack entries per category: the rows with at most ``slack`` blocked items read the cut lists, the others
    the whole ones, and every row equals the user-by-user builder's walk of the whole list. With ``share`` 0 only
    the lines with the shortest cut list are kept cut (the table as wide as that): the
    rows of the other lines read the whole lists, with the same rows."""
    monkeypatch.setattr(block_pages_module, "CAP_SLACK", slack)
    monkeypatch.setattr(block_pages_module, "SHORT_LINE_SHARE", share)
    settings = HomepageConfig(max_per_category=1, new_arrival_days=7, candidates=40,
                              sections=[SectionConfig(kind="because_you_viewed", title="Like {item_title}", slots=6),
                                        SectionConfig(kind="for_you", title="For you", slots=5)])
    catalogue, signals, unit, users = _page_signals(seed, settings)
    pages = BlockPages(signals, settings, unit)
    cut, whole = pages.short_neighbours[0], pages.neighbour_positions
    assert (cut >= 0).sum() < (whole >= 0).sum()  # the cut drops entries
    every = capped_lists(whole, pages.neighbour_scores, pages.in_stock, pages.category,
                         settings.max_per_category + slack)[0]  # every line cut
    every_length = (every >= 0).sum(axis=1)
    assert (pages.whole_neighbours == (every_length > np.quantile(every_length, share, method="higher"))).all()
    assert ((cut >= 0).sum(axis=1) == np.where(pages.whole_neighbours, 0, every_length)).all()
    # not vacuous: where the cut lists differ in length (they do with more than 1 slack item), lines are left whole
    assert pages.whole_neighbours.any() == (share < 1.0 and every_length.min() < every_length.max())
    assert slack == 1 or every_length.min() < every_length.max()
    bought = pages._bought(users)[1]
    assert (bought <= slack).any() and (bought > slack).any()  # both kinds of rows are in the block
    expected = _pages_one_by_one(users, catalogue, signals, settings, unit, None)
    pd.testing.assert_frame_equal(pages.build(users).reset_index(drop=True), expected, check_dtype=False, rtol=1e-6)


@pytest.mark.parametrize("slack", [1, 3, 5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cut_new_arrival_lists_give_the_rows_of_the_whole_lists(slack, seed, monkeypatch):
    """new_arrivals first (blocked: the purchases, 0 to ~10), lists cut per category to cap + slack in-stock items:
    the rows with at most ``slack`` blocked items read the cut lists, the others the whole ones, and every row
    equals the user-by-user builder's walk of the whole list; some cut lists are shorter than the whole ones."""
    monkeypatch.setattr(block_pages_module, "CAP_SLACK", slack)
    settings = HomepageConfig(max_per_category=1, new_arrival_days=500, candidates=40,
                              sections=[SectionConfig(kind="new_arrivals", title="New", slots=5),
                                        SectionConfig(kind="for_you", title="For you", slots=2)])
    catalogue, signals, unit, users = _page_signals(seed, settings)
    assert signals.new_arrival_scorer.vector_of is not None  # cold new arrivals share mean vectors
    pages = BlockPages(signals, settings, unit)
    calls = []
    real = block_pages_module.capped_grouped_order
    monkeypatch.setattr(block_pages_module, "capped_grouped_order",
                        lambda *args: calls.append(real(*args)) or calls[-1])
    expected = _pages_one_by_one(users, catalogue, signals, settings, unit, None)
    pd.testing.assert_frame_equal(pages.build(users).reset_index(drop=True), expected, check_dtype=False, rtol=1e-6)
    lists, held = calls[0]
    assert held.any() and ((lists >= 0).sum(axis=1) < signals.new_positions.size).any()  # some lists were cut


@hypothesis_settings(max_examples=80, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 3), st.integers(0, 4), st.integers(1, 8))
def test_a_row_with_at_most_slack_blocked_items_pools_the_same_from_the_cut_list(seed, cap, slack, pool_size):
    from homerank.homepage.block_pages import capped_lists
    from homerank.homepage.blocks import ItemSets, Rules, Source, fill_pools

    rng = np.random.default_rng(seed)
    items, groups, length, rows = 30, 4, 20, 12
    category = rng.integers(0, 3, items)  # few categories: long runs of one category, as neighbour lists have
    in_stock = rng.random(items) > 0.2
    positions = np.stack([rng.permutation(items)[:length] for _ in range(groups)])
    positions[0, 15:] = -1  # a shorter list
    scores = rng.random((groups, length))
    group = rng.integers(-1, groups, rows)
    blocked_rows, blocked_items = [], []
    for row in range(rows):  # up to `slack` blocked items, drawn from the row's own list (where they matter)
        pool = positions[max(group[row], 0)]
        chosen = rng.choice(pool[pool >= 0], size=rng.integers(0, slack + 1), replace=False)
        blocked_rows += [row] * chosen.size
        blocked_items += chosen.tolist()
    blocked = ItemSets(rows, items).add(np.array(blocked_rows, dtype=np.int64), np.array(blocked_items, np.int64))
    rules = Rules(in_stock, category, (blocked,), cap, pool_size)
    block = np.arange(rows)
    whole = fill_pools([Source(positions, scores, np.array(0), group)], block, rules)
    cut = fill_pools([Source(*capped_lists(positions, scores, in_stock, category, cap + slack), np.array(0), group)],
                     block, rules)
    for a, b in zip(whole, cut, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("settings", SETTINGS, ids=["category_cap", "mmr"])
@pytest.mark.parametrize("first", [4, 25, 100], ids=["short_first_lists", "first_lists_of_25", "whole_lists"])
def test_blocks_built_in_worker_processes_equal_one_process(settings, first, monkeypatch):
    """Forked block workers (blocks of 7 users in 3 processes, each block scoring its own users' candidates
    through a function of model rows: first the top ``first``, the whole top 40 for the rows that walk past them)
    give the rows and stats of one process with the whole precomputed lists."""
    monkeypatch.setattr(candidates_module, "FIRST_CANDIDATES", first)
    frames = _frames(3)
    candidates, scores = frames[0], frames[1]
    one = build_pages(*frames, settings.model_copy(update={"block_users": 7, "processes": 1}))
    calls: list[tuple[int, int]] = []

    def lists_of(rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        calls.append((rows.size, k))  # in the parent only when the blocks run here
        return candidates[rows, :k], scores[rows, :k]

    forked = build_pages(lists_of, None, *frames[2:], settings.model_copy(update={"block_users": 7, "processes": 3}))
    assert build_module.block_processes(3, 9) == 3 and build_module.block_processes(None, 1) == 1
    assert not calls  # every block was scored in a worker
    pd.testing.assert_frame_equal(forked.page, one.page)
    assert json.dumps(forked.stats, sort_keys=True) == json.dumps(one.stats, sort_keys=True)
    # in one process: the short lists are taken first, and the whole lists only for the rows that need them
    here = build_pages(lists_of, None, *frames[2:], settings.model_copy(update={"block_users": 7, "processes": 1}))
    pd.testing.assert_frame_equal(here.page, one.page)
    rows_scored = {k: sum(n for n, kk in calls if kk == k) for k in (first, 40)}
    warm = len(frames[6])
    if first == 4:  # every warm user's short list, and the whole list for all (no row fills from 4 items)
        assert rows_scored == {4: warm, 40: warm}
    elif first == 25:  # ... and for some of them
        assert rows_scored[25] == warm and 0 < rows_scored[40] < warm
    else:
        assert calls and all(k == 40 for _, k in calls) and rows_scored[40] == len(frames[6])


@pytest.mark.slow
def test_the_stage_publishes_parts_and_the_manifest_last(homepage_run, tmp_path, monkeypatch):
    from homerank.jobs.cli import main

    # the homepage is rebuilt (and --set written to config.yaml): on a copy, the shared run stays as it was
    run = Path(shutil.copytree(homepage_run[0], tmp_path / "run"))
    before = {name: (run / name).read_bytes() for name in ("homepage.jsonl", "homepage_stats.json")}
    manifest = json.loads((run / "homepage" / "_SUCCESS.json").read_text())
    page = pd.read_parquet(run / "homepage")
    # rebuild in blocks of 50 users in 2 worker processes: one part per block, same rows and the same JSON lines
    assert main(["homepage", "--out", str(run), "--set", "homepage.block_users=50", "--set", "homepage.processes=2",
                 "--quiet"]) == 0
    blocks = json.loads((run / "homepage" / "_SUCCESS.json").read_text())
    assert len(blocks["files"]) == -(-page["user_id"].nunique() // 50) and blocks["rows"] == manifest["rows"]
    pd.testing.assert_frame_equal(pd.read_parquet(run / "homepage"), page)
    assert (run / "homepage.jsonl").read_bytes() == before["homepage.jsonl"]
    # the second block fails, in this process and in a forked worker: nothing is published, the previous homepage
    # stays whole
    real = build_module.BlockPages.build
    second = np.sort(page["user_id"].unique())[50]

    def failing(self, users):
        if users[0] == second:
            raise RuntimeError("block 2 failed")
        return real(self, users)

    monkeypatch.setattr(build_module.BlockPages, "build", failing)
    for processes in (1, 2):
        with pytest.raises(RuntimeError, match="block 2 failed"):
            main(["homepage", "--out", str(run), "--set", "homepage.block_users=50", "--set",
                  f"homepage.processes={processes}", "--quiet"])
        assert json.loads((run / "homepage" / "_SUCCESS.json").read_text()) == blocks
        pd.testing.assert_frame_equal(pd.read_parquet(run / "homepage"), page)
        assert (run / "homepage.jsonl").read_bytes() == before["homepage.jsonl"]
    assert not any(p.name.startswith(".homepage") for p in run.iterdir())  # no staging or temp file left


def test_jsonl_text_is_json_dumps_of_the_records():
    from homerank.homepage.export import jsonl_text, page_records

    page = pd.DataFrame({
        "user_id": ["u\"1", "u\"1", "u\"1", "v", "v"], "section": ["for_you", "for_you", "buy_again", "for_you", "x"],
        "section_title": ["Für dich", "Für dich", "Again", "For you", "X"], "slot": [1, 2, 1, 1, 1],
        "item_id": ["a", "b", "c", "a", "é"], "score": [0.12345678, float("nan"), -0.0, 1e-7, 2.5e-05],
        "reason": ["r", "pin:merchandising:row2", "b", "r", "x"]})
    assert jsonl_text(page) == "".join(json.dumps(record) + "\n" for record in page_records(page))
    assert jsonl_text(page.iloc[:0]) == ""


@hypothesis_settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["u1", 'u"2', "ü3"]), st.sampled_from(["a", "b", "c"]),
                          st.sampled_from(["T", "T\x00x", "Für \"dich\"", ""]), st.integers(1, 40),
                          st.one_of(st.integers(-3, 5), st.just(10**12), st.just(-(2**63))),
                          st.one_of(st.floats(allow_infinity=False), st.just(-0.0), st.just(1e-7)),
                          st.sampled_from(["r", "pin:x", "\u2028"])), min_size=1, max_size=40),
       st.booleans())
def test_jsonl_text_equals_json_dumps_for_any_page(rows, explained):
    """Sections sharing a title, titles that differ within a section, NUL, quotes and non-ASCII text, NaN and
    -0.0 scores, large ids: the Arrow-assembled text equals json.dumps of the records, byte for byte."""
    from homerank.homepage.export import jsonl_text, page_records

    page = pd.DataFrame(rows, columns=["user_id", "section", "section_title", "slot", "item_id", "score", "reason"])
    page = page.sort_values("user_id", kind="stable").reset_index(drop=True)
    if explained:
        page["explanation"] = "Because of " + page["reason"]
    assert jsonl_text(page) == "".join(json.dumps(record) + "\n" for record in page_records(page))


def test_held_candidates_look_up_the_lists_a_gpu_scored_before_the_fork(monkeypatch):
    """With the model on a GPU the stage scores every user's top k before forking and the workers look rows up
    (jobs/stage_homepage.py `_held_candidates`): any first k' <= k columns of any rows equal the scorer's own top k',
    the forked build on the held lists equals one process, and lists that would not fit the memory share give None
    (the stage then builds in its own process)."""
    from homerank.jobs.stage_homepage import _held_candidates

    frames = _frames(4)
    user_emb, item_emb = frames[3], frames[2]
    scores = user_emb @ item_emb.T  # distinct floats: no ties, so top-k' is the prefix of top-k

    def lists_of(rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        values, items = torch.topk(scores[torch.from_numpy(np.asarray(rows))], k, dim=1)
        return items.numpy(), values.numpy()

    held = _held_candidates(lists_of, user_emb.shape[0], 40)
    rows = np.array([5, 0, 17, 5, user_emb.shape[0] - 1])
    for k in (1, 7, 40):
        items, values = held(rows, k)
        expected_items, expected_values = lists_of(rows, k)
        np.testing.assert_array_equal(items, expected_items)
        np.testing.assert_allclose(values, expected_values)
        assert items.dtype == np.int64 and items.shape == (rows.size, k)
    assert _held_candidates(lists_of, user_emb.shape[0], 40, memory_share=1e-12) is None
    settings = SETTINGS[0]
    one = build_pages(lists_of, None, *frames[2:], settings.model_copy(update={"block_users": 7, "processes": 1}))
    forked = build_pages(held, None, *frames[2:], settings.model_copy(update={"block_users": 7, "processes": 3}))
    pd.testing.assert_frame_equal(forked.page, one.page)
    assert json.dumps(forked.stats, sort_keys=True) == json.dumps(one.stats, sort_keys=True)


@given(st.integers(1, 6), st.integers(1, 30), st.integers(0, 35), st.sampled_from([1, 2, 3, 4, 10**6]),
       st.integers(0, 2**31 - 1))
@hypothesis_settings(max_examples=200, deadline=None)
def test_best_first_is_the_head_of_a_stable_descending_sort(rows, columns, width, distinct, seed):
    # few distinct values: ties everywhere, also across the cut; many: the partition's rows without ties
    scores = np.random.default_rng(seed).integers(0, distinct, (rows, columns)).astype(np.float32) / 7
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :width]
    np.testing.assert_array_equal(best_first(scores, width) if width else expected, expected)
    np.testing.assert_array_equal(best_first(scores, None), np.argsort(-scores, axis=1, kind="stable"))


def test_best_first_by_hand():
    scores = np.array([[0.1, 0.5, 0.5, 0.9, 0.5], [3.0, 1.0, 2.0, 2.0, 0.0]])
    np.testing.assert_array_equal(best_first(scores, 2), [[3, 1], [0, 2]])
    np.testing.assert_array_equal(best_first(scores, 3), [[3, 1, 2], [0, 2, 3]])


@given(st.integers(0, 5), st.integers(0, 40), st.sampled_from([1, 3, 30, 2**15 - 1, 2**15, 10**9]),
       st.integers(0, 2**31 - 1))
@hypothesis_settings(max_examples=150, deadline=None)
def testrank_within_rows_counts_the_earlier_equal_keys_of_the_row(rows, width, span, seed):
    from homerank.homepage.blocks import rank_within_rows

    keys = np.random.default_rng(seed).integers(-1, span, (rows, width))  # spans below 2^15: the int16 sort
    expected = np.array([[int((keys[r, :j] == keys[r, j]).sum()) for j in range(width)] for r in range(rows)],
                        dtype=np.int64).reshape(rows, width)
    np.testing.assert_array_equal(rank_within_rows(keys), expected)


def test_index_candidates_are_the_hnsw_lists_scored_exactly_best_first():
    """A large catalogue's homepage candidates come from the rank stage's HNSW item index (jobs/stage_homepage.py
    `_index_candidates`): exact scores e_u . e_i, best first, nearly the exact top k; a user the index finds too few
    items for is scored the exact way."""
    from homerank.jobs.recommend import ItemSearch
    from homerank.jobs.stage_homepage import _index_candidates

    rng = np.random.default_rng(0)
    users, items = rng.standard_normal((300, 16)).astype(np.float32), rng.standard_normal((3000, 16)).astype(np.float32)
    search = ItemSearch.build(items, exact_items=0)  # HNSW however small
    assert not search.exact
    exact_calls = []

    def exact(rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        exact_calls.append(np.asarray(rows).copy())
        scores = users[rows] @ items.T
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return top, np.take_along_axis(scores, top, axis=1)

    lists_of = _index_candidates(search, users, items, exact)
    rows = np.arange(0, 300, 3)
    found, scores = lists_of(rows, 50)
    assert found.shape == scores.shape == (rows.size, 50) and found.dtype == np.int64
    np.testing.assert_allclose(scores, np.einsum("nd,nkd->nk", users[rows], items[found]), rtol=1e-5, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    truth, _ = exact(rows, 50)
    recall = np.mean([len(set(a) & set(b)) / 50 for a, b in zip(truth, found, strict=True)])
    assert recall > 0.9
    exact_calls.clear()
    original = search.candidates
    search.candidates = lambda queries, k: np.where(np.arange(k) < k - 1, original(queries, k), -1)  # one short
    found, scores = lists_of(rows[:4], 10)
    assert [list(c) for c in exact_calls] == [list(rows[:4])]  # the short rows went the exact way
    np.testing.assert_array_equal(found, exact(rows[:4], 10)[0])


def test_cut_lists_are_the_same_whatever_the_chunk_of_lines(monkeypatch):
    from homerank.homepage.block_pages import capped_lists

    rng = np.random.default_rng(7)
    positions = np.stack([rng.permutation(40)[:25] for _ in range(9)]).astype(np.int32)
    positions[3, 10:] = -1
    scores = rng.random(positions.shape).astype(np.float32)
    category, in_stock = rng.integers(0, 3, 40), rng.random(40) > 0.2
    whole = capped_lists(positions, scores, in_stock, category, 3)
    monkeypatch.setattr(block_pages_module, "CUT_CHUNK", 2)
    chunked = capped_lists(positions, scores, in_stock, category, 3)
    for a, b in zip(whole, chunked, strict=True):
        np.testing.assert_array_equal(a, b)
    assert whole[0].dtype == np.int32 and whole[1].dtype == np.float32
    kept = whole[0][0][whole[0][0] >= 0]  # by hand: in-stock entries, at most 3 per category, in list order
    expected, seen = [], {}
    for p in positions[0].tolist():
        if in_stock[p] and seen.get(category[p], 0) < 3:
            expected.append(p)
            seen[category[p]] = seen.get(category[p], 0) + 1
    assert kept.tolist() == expected


@pytest.mark.parametrize("bins,chunk", [(1 << 24, 1 << 21), (1, 1 << 21), (1 << 24, 2), (1, 3)])
def test_segment_favourites_count_distinct_training_users(bins, chunk, monkeypatch):
    """Favourites by hand: segment 0 (users a, b), segment 1 (user c); a twin edge counts once, valid edges and
    users without a segment not at all; ties go to overall popularity, then catalogue position. The same from
    edges in (user, item) order and shuffled, with the bincount and with the distinct keys, in one piece or several."""
    from homerank.homepage import signals as signals_module
    from homerank.homepage.catalogue import Catalogue

    monkeypatch.setattr(signals_module, "FAVOURITE_BINS", bins)
    monkeypatch.setattr(signals_module, "FAVOURITE_CHUNK", chunk)  # pieces of 2 or 3 pairs: counts summed over them
    catalogue = Catalogue(item_ids=np.array([10, 11, 12]), category=np.array(["x", "x", "y"]),
                          title=np.array(["p", "q", "r"]), in_stock=np.ones(3, bool),
                          created_at=np.full(3, np.datetime64("NaT"), dtype="datetime64[ns]"),
                          price_band=np.zeros(3, int), model_index=np.arange(3),
                          trending=np.zeros(3), popularity=np.array([1.0, 5.0, 2.0]))
    profiles = pd.DataFrame({"user_id": [1, 2, 3], "segment": [0, 0, 1], "segment_name": ["s0", "s0", "s1"]})
    edges = pd.DataFrame({"user_id": [1, 1, 1, 2, 2, 3, 3, 4],
                          "item_id": [10, 10, 12, 11, 12, 10, 11, 11],
                          "split": ["train", "train", "train", "train", "train", "valid", "train", "train"]})
    for frame in (edges, edges.sample(frac=1.0, random_state=3)):
        favourites = signals_module.profile_signals(profiles, frame, catalogue)["segment_favourites"]
        assert sorted(favourites) == [0, 1]
        positions, counts = favourites[0]
        assert positions.tolist() == [2, 1, 0] and counts.tolist() == [2.0, 1.0, 1.0]  # 12 by a and b; 11 ahead of 10
        positions, counts = favourites[1]
        assert positions.tolist() == [1] and counts.tolist() == [1.0]


@hypothesis_settings(max_examples=120, deadline=None)
@given(st.integers(1, 6), st.integers(1, 30), st.integers(0, 12), st.one_of(st.none(), st.integers(1, 35)),
       st.integers(0, 10**6))
def test_grouped_best_first_is_the_head_of_a_stable_descending_sort(rows, columns, groups, width, seed):
    """Columns sharing a group share its score: the grouped order equals the stable sort of the expanded (n, N)
    scores, with scores drawn from a few values (ties between groups go through the fallback), and with -inf."""
    from homerank.homepage.block_pages import grouped_best_first

    rng = np.random.default_rng(seed)
    groups = max(1, min(groups, columns))
    vector_of = rng.integers(0, groups, columns)
    scores = rng.choice([-np.inf, -1.0, 0.0, 0.5, 2.0, 3.25], size=(rows, groups)).astype(np.float32)
    if seed % 3:  # most rows without ties between groups
        scores = rng.standard_normal((rows, groups)).astype(np.float32)
    full = scores[:, vector_of]
    expected = np.argsort(-full, axis=1, kind="stable")[:, : columns if width is None else min(width, columns)]
    assert np.array_equal(grouped_best_first(scores, vector_of, width), expected)


def test_new_arrival_scores_are_scored_once_per_distinct_vector():
    """Three new arrivals, two sharing one vector: two columns scored, read back as three; the block source orders
    them by score, the shared vector's items in catalogue order."""
    from homerank.homepage.signals import NewArrivalScorer

    users = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    new = torch.tensor([[0.5, 0.5], [2.0, 0.0], [0.5, 0.5]])
    scorer = NewArrivalScorer(users, new)
    assert scorer.new_vectors.shape == (2, 2) and scorer.vector_of.tolist() == [0, 1, 0]
    table = scorer.for_rows(np.array([1, 0, -1]))
    assert table.scores.shape == (2, 2)
    assert table[np.array([0, 1])].tolist() == [[0.5, 2.0, 0.5], [0.5, 0.0, 0.5]]
    assert table[1].tolist() == [0.5, 0.0, 0.5]
    with pytest.raises(KeyError):
        table[np.array([2])]


def test_even_block_sizes_by_hand():
    from homerank.homepage.build import even_block_size

    assert even_block_size(60_000, 8192) == 7500  # 8 equal blocks, not 7 x 8192 + 2656
    assert even_block_size(600_000, 8192) == 8109  # 74 blocks either way: ceil(600,000 / 74)
    assert even_block_size(50_000, 8192) == 7143  # 7 blocks
    assert even_block_size(100, 8192) == 100 and even_block_size(0, 8192) == 1 and even_block_size(10, 3) == 3


@hypothesis_settings(max_examples=150, deadline=None)
@given(st.integers(1, 5), st.integers(1, 40), st.integers(1, 12), st.integers(1, 4), st.integers(1, 5),
       st.integers(1, 30), st.booleans(), st.integers(0, 10**6))
def test_capped_grouped_order_is_the_whole_list_cut_per_category(rows, columns, groups, categories, keep, width,
                                                                 distinct, seed):
    """Each row's in-stock columns in the stable descending order of the expanded scores, at most ``keep`` per
    category, the first ``width``: by a plain walk over the whole list, for every row not marked as tied; a group
    whose items span two categories gives None."""
    from homerank.homepage.block_pages import capped_grouped_order

    rng = np.random.default_rng(seed)
    vector_of = rng.integers(0, groups, columns)
    category = rng.integers(0, categories, groups)[vector_of]  # one category per group
    in_stock = rng.random(columns) > 0.2
    scores = (rng.standard_normal((rows, groups)) if distinct else
              rng.choice([-np.inf, 0.0, 1.0, 2.0], size=(rows, groups))).astype(np.float32)
    lists, held = capped_grouped_order(scores, vector_of, in_stock, category, keep, width)
    assert lists.shape == (rows, width) and held.shape == (rows,)
    order = np.argsort(-scores[:, vector_of], axis=1, kind="stable")
    for line in np.flatnonzero(held):
        taken: dict[int, int] = {}
        expected = []
        for column in order[line].tolist():
            if in_stock[column] and taken.get(category[column], 0) < keep:
                taken[category[column]] = taken.get(category[column], 0) + 1
                expected.append(column)
        expected = expected[:width]
        assert lists[line, : len(expected)].tolist() == expected and (lists[line, len(expected):] == -1).all()
    if distinct:
        assert held.all()
    mixed = np.array([0, 0])
    assert capped_grouped_order(np.zeros((1, 1), np.float32), mixed, np.ones(2, bool), np.array([0, 1]), 2, 4) is None


@hypothesis_settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.floats(-2000, 2000), st.floats(-1e-3, 1e-3),
                          st.integers(-10**9, 10**9).map(lambda n: n / 1e6 + 5e-7),  # near a half of the 6th decimal
                          st.integers(-10**9, 10**9).map(lambda n: n / 1e6),
                          st.sampled_from([0.0, -0.0, 1e-4, -1e-4, 9.9995e-05, 5e-07, -5e-07, 999.9999995, 1e3,
                                           float("nan"), float("inf"), -float("inf"), 1e16, 0.1 + 0.2])),
                min_size=1, max_size=60))
def test_score_text_is_json_dumps_of_the_rounded_score(scores):
    """The scores' JSON text, formatted from integer millionths for nearly all of them, equals json.dumps of
    `_json_score` (repr of round(score, 6); null for NaN) for any score: near halves of the last decimal, tiny ones
    in exponent notation, negative zeros, large and infinite ones."""
    from homerank.homepage.export import _encoded_scores, _json_score

    expected = [json.dumps(_json_score(score)) for score in scores]
    assert _encoded_scores(pd.Series(scores, dtype="float64")).to_pylist() == expected


def test_the_stage_reads_only_the_interaction_columns_the_pages_use(homepage_run):
    """The homepage stage's interactions hold user, item, weight, last_ts, the purchase count (int32) and whether
    the pair was viewed / carted (count > 0, bool); ``first_ts`` is read as its least value alone (the explanations'
    trend span), equal to the column's minimum."""
    from homerank.jobs.rundir import RunDir
    from homerank.jobs.stage_homepage import first_seen, read_interactions

    run = RunDir(homepage_run[0])
    lean = read_interactions(run)
    whole = pd.read_parquet(run.interactions)
    assert "first_ts" in whole and "n_click" in whole  # the ETL's table has them; the pages do not read them
    assert list(lean.columns) == [c for c in whole.columns
                                  if c in ("user_id", "item_id", "weight", "last_ts", "n_view", "n_cart", "n_purchase")]
    assert lean["n_purchase"].dtype == np.int32 and (lean["n_purchase"].to_numpy() == whole["n_purchase"]).all()
    for presence in ("n_view", "n_cart"):
        assert lean[presence].dtype == bool and (lean[presence].to_numpy() == (whole[presence] > 0)).all()
    assert 0 < lean["n_cart"].sum() < len(lean)  # carted and not carted pairs are both in the tiny log
    assert len(lean) == len(whole) and (lean["last_ts"].to_numpy() == whole["last_ts"].to_numpy()).all()
    assert first_seen(run) == whole["first_ts"].min()


@hypothesis_settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4), st.booleans()), max_size=30), st.integers(1, 6),
       st.booleans())
def test_distinct_pairs_in_pieces_gives_each_selected_pair_once(rows, chunk, ordered):
    """The pieces hold every distinct (user, item) pair of the selected rows exactly once, whatever the piece size,
    for edges in (user, item) order (twins adjacent, split across pieces or with unselected rows between them) and
    in any order."""
    from homerank.homepage.signals import distinct_pairs_in_pieces

    if ordered:
        rows = sorted(rows, key=lambda r: (r[0], r[1]))
    edges = pd.DataFrame({"user_id": np.array([r[0] for r in rows], dtype=np.int64),
                          "item_id": np.array([r[1] for r in rows], dtype=np.int64)})
    selected = np.array([r[2] for r in rows], dtype=bool)
    pieces = list(distinct_pairs_in_pieces(edges, selected, chunk))
    found = [(int(u), int(i)) for users, items in pieces for u, i in zip(users, items, strict=True)]
    assert sorted(found) == sorted({(u, i) for u, i, keep in rows if keep})


def test_blocks_are_merged_in_block_order_whatever_order_they_finish_in():
    """Blocks finishing 2, 0, 3, 1: their sums are merged (and rows given) in block order 0, 1, 2, 3, and a block
    waits only while one before it is unfinished."""
    merged: list[int] = []

    class Tally:
        def merge(self, sums):
            merged.append(sums)

    finished: list[int] = []

    def results():
        for number in (2, 0, 3, 1):
            finished.append(number)
            yield number, pd.DataFrame({"block": [number]}), number

    pages = []
    for page in build_module._merged_in_block_order(results(), Tally()):
        pages.append(int(page["block"].iloc[0]))
        if pages == [0]:  # block 0 is merged as soon as it is back, before blocks 3 and 1 finish
            assert finished == [2, 0]
    assert merged == [0, 1, 2, 3] and pages == [0, 1, 2, 3]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_block_worker_dies_with_the_process_that_forked_it(tmp_path):
    """A stage process killed with SIGKILL while its block workers run: the workers (set up as `_run_blocks` sets
    them up) are killed too, instead of living on as orphans that hold memory and the run directory's lock."""
    import psutil

    pid_file = tmp_path / "worker.pid"
    stage = os.fork()
    if stage == 0:  # the stage process: forks one block worker, then waits to be killed
        try:
            worker = os.fork()
            if worker == 0:
                build_module._exit_with_parent(os.getppid())
                time.sleep(30)
                os._exit(0)
            pid_file.write_text(str(worker))
            time.sleep(30)
        finally:
            os._exit(0)
    deadline = time.time() + 10
    while not pid_file.exists() or not pid_file.read_text():
        assert time.time() < deadline, "the stage process did not fork its worker"
        time.sleep(0.05)
    worker = int(pid_file.read_text())
    time.sleep(0.2)  # the worker has set up its parent-death signal
    assert psutil.pid_exists(worker)
    os.kill(stage, signal.SIGKILL)
    os.waitpid(stage, 0)
    deadline = time.time() + 10
    while True:
        try:
            if psutil.Process(worker).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        assert time.time() < deadline, "the block worker outlived the process that forked it"
        time.sleep(0.05)


@pytest.mark.parametrize("parts", [1, 3])
def test_a_dataset_read_part_by_part_equals_the_whole_read(tmp_path, parts):
    """`read_parquet_parts`: numbers, booleans, times, nullable integers, text and categories of 1 or 3 parts (one of
    them empty) read into one frame, as `pd.read_parquet` of the folder reads them; ``convert`` maps every part."""
    import pyarrow.compute as pc

    from homerank.jobs.artifacts import read_parquet_parts

    rng = np.random.default_rng(5)
    n = 40
    frame = pd.DataFrame({
        "user_id": rng.integers(0, 10**12, n), "weight": rng.random(n), "flag": rng.random(n) > 0.5,
        "last_ts": pd.Timestamp("2026-01-01") + pd.to_timedelta(rng.integers(0, 10**6, n), unit="s"),
        "maybe": pd.array([None if v < 3 else int(v) for v in rng.integers(0, 9, n)], dtype="Int64"),
        "name": pd.array([f"u{i}" if i % 7 else None for i in range(n)], dtype="string"),
        "kind": pd.Categorical(rng.choice(["a", "b"], n)),
    })
    folder = tmp_path / "data"
    folder.mkdir()
    cuts = [0, 13, 13, n] if parts == 3 else [0, n]  # the second of three parts is empty
    for number, (start, stop) in enumerate(zip(cuts, cuts[1:], strict=False)):
        frame.iloc[start:stop].to_parquet(folder / f"part-{number:05d}.parquet", index=False)
    got = read_parquet_parts(folder, ["user_id", "weight", "flag", "last_ts", "maybe", "name", "kind"])
    pd.testing.assert_frame_equal(got, pd.read_parquet(folder), check_categorical=False)
    halved = read_parquet_parts(folder, ["weight", "user_id"],
                                lambda table: table.set_column(0, "weight", pc.divide(table["weight"], 2.0)))
    assert list(halved.columns) == ["weight", "user_id"] and halved["user_id"].tolist() == frame["user_id"].tolist()
    np.testing.assert_allclose(halved["weight"].to_numpy(), frame["weight"].to_numpy() / 2)
    if parts == 3:  # a part whose column has another dtype (integers, then floats): the column is joined as pandas does
        frame.iloc[13:].assign(user_id=lambda f: f["user_id"] + 0.5).to_parquet(folder / "part-00002.parquet",
                                                                                index=False)
        mixed = read_parquet_parts(folder, ["user_id", "weight"])
        expected = pd.concat([frame["user_id"].iloc[:13], frame["user_id"].iloc[13:] + 0.5], ignore_index=True)
        pd.testing.assert_series_equal(mixed["user_id"], expected)


@pytest.mark.parametrize("kernel_copy", [True, False])
def test_append_file_appends_whole_files_in_order(tmp_path, monkeypatch, kernel_copy):
    """`append_file` joins the blocks' JSON lines byte for byte, by ``os.sendfile`` or, where that fails, by reading
    and writing (a part of 5 MiB crosses the 4 MiB pieces)."""
    from homerank.jobs.stage_homepage import append_file

    if not kernel_copy:
        def no_sendfile(*args):
            raise OSError("sendfile not supported here")
        monkeypatch.setattr(os, "sendfile", no_sendfile)
    parts = [b'{"user_id": 1}\n', b"", bytes(range(256)) * (5 * 4096), "é\n".encode()]
    for number, data in enumerate(parts):
        (tmp_path / f"part-{number}").write_bytes(data)
    with open(tmp_path / "joined", "wb") as out:
        out.write(b"head\n")  # buffered, not yet on disk: written before the parts
        for number in range(len(parts)):
            with open(tmp_path / f"part-{number}", "rb") as source:
                append_file(source, out)
    assert (tmp_path / "joined").read_bytes() == b"head\n" + b"".join(parts)
