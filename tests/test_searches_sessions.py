"""Search keywords and sessions (issue 19 item 4), by hand: search rows are routed to etl/searches and never to the
edges, bad ones are quarantined with counts; the user's top query terms; the last session from session ids and from
a time gap; the related_to_searches row ranks the title-matching item first and names the query; the
continue_shopping row and its explanation; end to end on a tiny generated log with searches."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from homerank.engine import schema
from homerank.engine.backend import resolve_backend
from homerank.engine.config import IngestConfig
from homerank.engine.errors import HomerankError
from homerank.engine.ingest import ingest_events, split_searches, validate_events, validate_searches
from homerank.engine.searches import search_summary, top_terms
from homerank.engine.sessions import last_session_items
from homerank.homepage.build import _pages_one_by_one, build_pages
from homerank.homepage.config import HomepageConfig
from homerank.jobs.cli import main
from homerank.jobs.rundir import RunDir, verify_dataset

CPU = resolve_backend("cpu")
TYPES = ["view", "click", "cart", "purchase"]

LOG = (
    "user_id,item_id,event_type,timestamp,query\n"
    "u1,i1,view,2026-01-01T10:00:00,\n"                       # 0 an event
    "u1,,search,2026-01-01T09:59:00,red running shoes\n"      # 1 a search without an item
    "u1,i9,Search ,2026-01-01T10:05:00,  red kettle \n"       # 2 a search naming an item: the item is ignored
    "u2,,search,2026-01-01T11:00:00,\n"                       # 3 empty query
    "u2,,search,not-a-date,shoes\n"                           # 4 bad time
    ",,search,2026-01-01T11:00:00,shoes\n"                    # 5 no user
    "u2,i2,purchase,2026-01-01T11:10:00,ignored\n"            # 6 an event with a query cell: not a search
    "u1,,search,2026-01-01T09:59:00,red running shoes\n"      # 7 an exact duplicate of 1
    "u3,i3,wishlist,2026-01-01T12:00:00,\n"                   # 8 unknown event type
)


def _csv(tmp_path, text: str = LOG):
    path = tmp_path / "log.csv"
    path.write_text(text)
    return path


def test_search_rows_are_split_from_the_events_and_bad_ones_quarantined(tmp_path):
    result = ingest_events(str(_csv(tmp_path)), IngestConfig(), CPU, searches_dir=tmp_path / "searches")
    # 9 rows = 2 events + 3 searches + 4 quarantined (+ 0 duplicate events)
    assert result.rows == {"in": 9, "kept": 2, "quarantined": 4, "duplicates": 0, "searches": 3}
    assert result.reasons == {"empty_query": 1, "unparsable_timestamp": 1, "null_or_bad_user_id": 1,
                              "unknown_event_type": 1}
    assert result.search_quarantined == 3
    quarantine = result.read_quarantine().sort_values(schema.SOURCE_ROW)
    assert quarantine[schema.SOURCE_ROW].tolist() == [3, 4, 5, 8]
    assert quarantine[schema.REASON].tolist() == ["empty_query", "unparsable_timestamp", "null_or_bad_user_id",
                                                  "unknown_event_type"]
    events = result.events.compute()
    assert sorted(events[schema.ITEM]) == ["i1", "i2"] and set(events[schema.EVENT]) == {"view", "purchase"}
    searches = pd.concat([pd.read_parquet(p) for p in sorted(result.searches.glob("part-*.parquet"))])
    assert list(searches.columns) == [schema.USER, schema.TS, schema.QUERY]
    assert sorted(searches[schema.QUERY]) == ["red kettle", "red running shoes", "red running shoes"]  # stripped
    assert set(searches[schema.USER]) == {"u1"}


def test_without_a_query_column_nothing_changes(tmp_path):
    text = "\n".join(",".join(line.split(",")[:4]) for line in LOG.splitlines()) + "\n"
    result = ingest_events(str(_csv(tmp_path, text)), IngestConfig(), CPU)
    assert result.searches is None and "searches" not in result.rows
    assert result.rows == {"in": 9, "kept": 2, "quarantined": 7, "duplicates": 0}
    # searches are then events of an unknown type: without an item that check fails first
    assert result.reasons == {"null_or_bad_item_id": 4, "unknown_event_type": 2, "null_or_bad_user_id": 1}
    # and with searches turned off, a query column is not read
    off = ingest_events(str(_csv(tmp_path)), IngestConfig(search_event=None), CPU)
    assert off.searches is None and off.rows["quarantined"] == 7


def test_search_settings_and_column_types_are_checked(tmp_path):
    with pytest.raises(ValidationError, match="search_event 'search' is also in ingest.event_types"):
        IngestConfig(event_types=["view", "search"])
    assert IngestConfig(event_types=["view", "search"], search_event=None).search_event is None
    frame = pd.DataFrame({"user_id": [1], "item_id": [2], "event_type": ["search"],
                          "timestamp": pd.to_datetime(["2026-01-01"]), "query": [7]})
    frame.to_parquet(tmp_path / "log.parquet")
    with pytest.raises(HomerankError, match=r"log.parquet: column 'query' has type int64; expected strings"):
        ingest_events(str(tmp_path / "log.parquet"), IngestConfig(), CPU)


def test_the_etl_writes_searches_apart_and_never_as_edges(tmp_path):
    out = tmp_path / "run"
    assert main(["etl", "--input", str(_csv(tmp_path)), "--out", str(out), "--device", "cpu", "--quiet",
                 "--set", "interactions.min_user_interactions=1", "--set", "interactions.min_item_interactions=1",
                 "--set", "gates.max_quarantined_share=null"]) == 0
    run = RunDir(out)
    verify_dataset(run.searches)
    searches = pd.read_parquet(run.searches)
    assert searches[schema.QUERY].tolist() == ["red running shoes", "red kettle"]  # by user and time, deduplicated
    stats = json.loads(run.etl_stats.read_text())
    assert stats["searches"] == {"rows": 3, "kept": 2, "duplicates": 1, "users": 1, "quarantined": 3}
    assert stats["rows"]["searches"] == 3 and stats["quarantine_reasons"]["empty_query"] == 1
    for dataset in (run.edges, run.interactions):
        assert sorted(pd.read_parquet(dataset)[schema.ITEM]) == ["i1", "i2"]  # no search, no i9
    profiles = pd.read_parquet(run.profiles).set_index(schema.USER)
    assert profiles.loc["u1", "n_searches"] == 2 and profiles.loc["u2", "n_searches"] == 0
    assert profiles.loc["u1", "top_query_terms"] == "red, kettle, running"  # red twice, then alphabetical
    assert pd.isna(profiles.loc["u2", "top_query_terms"])
    assert "Searches" in run.report.read_text()
    last = pd.read_parquet(run.last_session)  # u2 bought i2 in its only session: nothing to continue
    assert last[[schema.USER, schema.ITEM, schema.EVENT]].values.tolist() == [["u1", "i1", "view"]]


def test_top_query_terms_by_hand():
    users = pd.Series(["a", "a", "b"])
    queries = pd.Series(["Red shoes", "red the kettle", "Phones 2"])
    # a: red 2, kettle 1, shoes 1 ("the" is a stop word): the tie goes to the alphabetically first term
    assert top_terms(users, queries, 2).to_dict() == {"a": "red, kettle", "b": "2, phones"}
    summary = search_summary(pd.DataFrame({"user_id": users, "timestamp": pd.to_datetime(
        ["2026-01-02", "2026-01-01", "2026-01-03"]), "query": queries}), 3).set_index("user_id")
    assert summary["n_searches"].to_dict() == {"a": 2, "b": 1}
    assert summary.loc["a", "last_search"] == pd.Timestamp("2026-01-02")


def _visits(session_ids: list[str] | None = None) -> pd.DataFrame:
    """a: 08:00 view 1, 08:10 click 1 | 12:00 view 2, 12:05 cart 3, 12:20 view 4, 12:30 buy 4, 12:31 view 5;
    b: one view of 1."""
    events = pd.DataFrame({
        "user_id": ["a"] * 7 + ["b"], "item_id": [1, 1, 2, 3, 4, 4, 5, 1],
        "event_type": pd.Categorical(["view", "click", "view", "cart", "view", "purchase", "view", "view"],
                                     categories=TYPES),
        "timestamp": pd.to_datetime(["2026-01-01 08:00", "2026-01-01 08:10", "2026-01-01 12:00", "2026-01-01 12:05",
                                     "2026-01-01 12:20", "2026-01-01 12:30", "2026-01-01 12:31",
                                     "2026-01-01 09:00"]).astype("datetime64[ns]")})
    if session_ids is not None:
        events["session_id"] = session_ids
    return events.sample(frac=1, random_state=0)  # any order


def _items(table: pd.DataFrame, user: str) -> list[tuple[int, str]]:
    rows = table[table["user_id"] == user]
    return list(zip(rows["item_id"].tolist(), rows["event_type"].tolist(), strict=True))


def test_last_session_from_a_time_gap():
    table = last_session_items(_visits(), TYPES, gap_minutes=30)
    # 08:10 -> 12:00 is a gap of 3 h 50 min: the last session starts at 12:00; 4 was bought there
    assert _items(table, "a") == [(5, "view"), (3, "cart"), (2, "view")]
    first = table[table["user_id"] == "a"].iloc[0]
    assert first["session_start"] == pd.Timestamp("2026-01-01 12:00")
    assert first["session_end"] == pd.Timestamp("2026-01-01 12:31")
    assert first["last_ts"] == pd.Timestamp("2026-01-01 12:31")
    assert _items(table, "b") == [(1, "view")]
    # a 5 h gap joins the morning and the noon visit: one session
    assert _items(last_session_items(_visits(), TYPES, gap_minutes=300), "a") == [
        (5, "view"), (3, "cart"), (2, "view"), (1, "click")]


def test_last_session_from_session_ids():
    # the newest event (12:31, item 5) belongs to s1, which also holds the morning visit: s1 is the last session
    ids = ["s1", "s1", "s2", "s2", "s2", "s2", "s1", "s9"]
    frame = _visits(ids)
    table = last_session_items(frame, TYPES, gap_minutes=30)
    assert _items(table, "a") == [(5, "view"), (1, "click")]
    assert table[table["user_id"] == "a"]["session_start"].iloc[0] == pd.Timestamp("2026-01-01 08:00")



def test_without_a_purchase_type_nothing_is_left_out():
    visits = _visits()
    types = ["view", "click", "cart"]
    visits["event_type"] = pd.Categorical(visits["event_type"].astype(str).replace("purchase", "view"),
                                          categories=types)
    assert _items(last_session_items(visits, types, gap_minutes=30), "a") == [
        (5, "view"), (4, "view"), (3, "cart"), (2, "view")]


NOW = pd.Timestamp("2026-03-29")
HOUR, DAY = pd.Timedelta(hours=1), pd.Timedelta(days=1)


def _shop():
    """build_pages inputs: five items with titles; u bought 10 and viewed 13, v viewed 14, w only searched."""
    catalogue = pd.DataFrame({
        "item_id": [10, 11, 12, 13, 14],
        "title": ["Red running shoes", "Blue kettle", "Running socks", "Red wine glass", "Green garden hose"],
        "category": ["Shoes", "Kitchen", "Sports", "Kitchen", "Garden"], "price": [1.0, 2.0, 3.0, 4.0, 5.0],
        "created_at": [NOW - 400 * DAY] * 5, "in_stock": [True] * 5})
    interactions = pd.DataFrame({
        "user_id": ["u", "u", "v"], "item_id": [10, 13, 14], "weight": 1.0,
        "first_ts": [NOW - 2 * DAY, NOW - DAY, NOW - DAY], "last_ts": [NOW - 2 * DAY, NOW - DAY, NOW - HOUR],
        "n_view": 1, "n_cart": [0, 0, 1], "n_purchase": [1, 0, 0]})
    item_index = pd.DataFrame({"item_id": [10, 11, 12, 13, 14], "item_index": [0, 1, 2, 3, 4]})
    user_index = pd.DataFrame({"user_id": ["u", "v"], "user_index": [0, 1]})
    edges = interactions.merge(user_index).merge(item_index).assign(split="train")
    generator = torch.Generator().manual_seed(0)
    user_embeddings, item_embeddings = torch.randn(2, 4, generator=generator), torch.randn(5, 4, generator=generator)
    candidates, scores = np.array([[1, 2, 4], [0, 1, 2]]), np.array([[0.9, 0.8, 0.7]] * 2)
    searches = pd.DataFrame({"user_id": ["u", "v", "v", "w"],
                             "timestamp": [NOW - 2 * HOUR, NOW - 30 * DAY, NOW - HOUR, NOW],
                             "query": ["red running shoes", "blue kettle", "running socks", "garden hose"]})
    sessions = pd.DataFrame({"user_id": ["u", "v"], "item_id": [13, 14], "last_ts": [NOW - DAY, NOW - HOUR],
                             "event_type": ["view", "cart"], "session_start": [NOW - DAY - 10 * pd.Timedelta(
                                 minutes=1), NOW - HOUR], "session_end": [NOW - DAY, NOW - HOUR]})
    frames = (candidates, scores, item_embeddings, user_embeddings, interactions, edges, user_index, item_index,
              catalogue, NOW)
    return frames, searches, sessions


SETTINGS = {"sections": [
    {"kind": "continue_shopping", "title": "Continue where you left off", "slots": 3},
    {"kind": "related_to_searches", "title": "Because you searched for {query}", "slots": 3},
    {"kind": "for_you", "title": "For you", "slots": 2}],
    "search": {"min_similarity": 0.2, "half_life_days": 7}}


def test_related_to_searches_ranks_the_matching_title_first_and_names_the_query():
    frames, searches, sessions = _shop()
    homepage = build_pages(*frames, HomepageConfig.model_validate(SETTINGS), searches=searches, sessions=sessions)
    page = homepage.page
    related = {user: rows for user, rows in page[page["section"] == "related_to_searches"].groupby("user_id")}
    # w searched "garden hose": the garden hose first; w has no interaction but gets a page
    assert related["w"]["item_id"].iloc[0] == 14
    assert related["w"]["explanation"].iloc[0] == "Because you searched for 'garden hose'"
    assert related["w"]["section_title"].iloc[0] == "Because you searched for garden hose"
    # v: "running socks" an hour ago outweighs "blue kettle" a month ago (weight 0.5 ** (30 / 7) ~ 0.05)
    assert related["v"]["item_id"].iloc[0] == 12
    assert related["v"]["explanation"].iloc[0] == "Because you searched for 'running socks'"
    assert 11 not in related["v"]["item_id"].tolist()  # the old kettle query: below min_similarity
    # u searched "red running shoes", the title of 10: 10 is u's nearest item, but u bought it, and a bought item is
    # never shown outside buy_again
    from homerank.homepage.catalogue import build_catalogue
    from homerank.homepage.searches import search_history

    settings = HomepageConfig.model_validate(SETTINGS)
    catalogue = build_catalogue(frames[8], frames[4], frames[7], frames[5], NOW, settings)
    positions, scores, group = search_history(searches, catalogue, NOW, settings.search).candidates_of(
        np.array(["u", "x"], dtype=object))
    assert catalogue.item_ids[positions[group[0], 0]] == 10 and scores[group[0], 0] > 0.9 and group[1] == -1
    assert 10 not in page.loc[page["user_id"] == "u", "item_id"].tolist()
    assert related["u"]["explanation"].eq("Because you searched for 'red running shoes'").all()
    assert (related["u"]["reason"] == "related_to_searches:query_similarity").all()
    # continue where you left off
    again = page[page["section"] == "continue_shopping"].set_index("user_id")
    assert again.loc["u", "item_id"] == 13
    assert again.loc["u", "explanation"] == "From your last visit on 27 Mar 2026"
    stats = homepage.stats
    assert stats["rule_check"]["passed"] and stats["users"] == 3
    assert stats["signals"] == {"search_users": 3, "last_session_users": 2}
    assert stats["explanations"]["searched_for"] >= 3
    # v's last-session item 14 is not on v's page twice (the page rules hold across rows)
    assert not page.duplicated(["user_id", "item_id"]).any()


def test_the_vectorised_rows_equal_the_user_by_user_builder():
    frames, searches, sessions = _shop()
    settings = HomepageConfig.model_validate(SETTINGS)
    block = build_pages(*frames, settings, searches=searches, sessions=sessions)
    from homerank.homepage.catalogue import build_catalogue, item_vectors
    from homerank.homepage.signals import collect_signals

    (candidates, scores, item_embeddings, user_embeddings, interactions, edges, user_index, item_index, items,
     now) = frames
    catalogue = build_catalogue(items, interactions, item_index, edges, now, settings)
    vectors, source = item_vectors(catalogue, item_embeddings)
    signals = collect_signals(catalogue, vectors, interactions, candidates, scores, user_embeddings,
                              item_embeddings, user_index, now, settings, None, edges, source, searches, sessions)
    unit = torch.nn.functional.normalize(vectors, dim=1).numpy()
    one_by_one = _pages_one_by_one(np.array(["u", "v", "w"], dtype=object), catalogue, signals, settings, unit, None)
    columns = ["user_id", "section", "section_title", "slot", "item_id", "reason"]
    assert block.page[columns].reset_index(drop=True).equals(one_by_one[columns].reset_index(drop=True))


def test_a_carted_item_says_so():
    frames, searches, sessions = _shop()
    settings = HomepageConfig.model_validate({"sections": [
        {"kind": "continue_shopping", "title": "Continue", "slots": 3}]})
    page = build_pages(*frames, settings, searches=searches, sessions=sessions).page.set_index("user_id")
    assert page.loc["v", "explanation"] == "You added this to your cart on your last visit on 28 Mar 2026"
    assert "w" not in page.index  # no related_to_searches section: users who only searched have no page


@pytest.mark.slow
def test_end_to_end_on_a_generated_log_with_searches(tmp_path, tiny_config):
    from homerank.engine.synthetic import SyntheticSpec, generate

    log_dir = tmp_path / "log"
    generate(log_dir, SyntheticSpec(users=300, items=160, events=12_000, users_per_partition=120, seed=5,
                                    search_share=0.3))
    out = tmp_path / "run"
    assert main(["run", "--input", str(log_dir / "events"), "--out", str(out), "--config", str(tiny_config),
                 "--set", f"ingest.catalogue={log_dir / 'items.parquet'}", "--quiet"]) == 0
    run = RunDir(out)
    raw = pd.read_parquet(log_dir / "events")
    searches = pd.read_parquet(run.searches)
    stats = json.loads(run.etl_stats.read_text())
    assert stats["searches"]["kept"] == len(searches) > 0
    assert stats["rows"]["searches"] == int((raw["event_type"] == "search").sum() - raw.loc[
        raw["event_type"] == "search", ["user_id", "timestamp"]].isna().any(axis=1).sum())
    assert pd.read_parquet(run.interactions)[schema.ITEM].notna().all()  # searches made no edges
    profiles = pd.read_parquet(run.profiles)
    assert profiles["n_searches"].sum() <= len(searches) and (profiles["n_searches"] > 0).any()
    page = pd.read_parquet(run.homepage)
    homepage_stats = json.loads(run.homepage_stats.read_text())
    assert homepage_stats["rule_check"]["passed"]
    related = page[page["section"] == "related_to_searches"]
    assert len(related) and related["explanation"].str.match(r"Because you searched for '.+'$").all()
    # the named query is one of the user's, and the first related item shares a word with it
    titles = pd.read_parquet(log_dir / "items.parquet").set_index("item_id")["title"]
    first = related[related["slot"] == 1]
    shared = [
        bool(set(re.findall(r"\w+", titles[item].lower())) & set(re.findall(r"\w+", text.split("'")[1])))
        for item, text in zip(first["item_id"], first["explanation"], strict=True)]
    assert np.mean(shared) > 0.9
    queries = searches.groupby("user_id")["query"].agg(set)
    named = related["explanation"].str.extract(r"'(.+)'$")[0]
    assert all(query in queries[user] for user, query in zip(related["user_id"], named, strict=True))
    # continue where you left off: the items of the user's last session
    again = page[page["section"] == "continue_shopping"]
    last = pd.read_parquet(run.last_session)
    assert len(again) and again.merge(last, on=["user_id", "item_id"]).shape[0] == len(again)
    assert again["explanation"].str.match(r"(From your|You added this to your cart on your) last visit on "
                                          r"\d{1,2} [A-Z][a-z]{2} \d{4}$").all()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["u1", "u2", None]), st.sampled_from(["i1", "i2", None]),
                          st.sampled_from(["view", "search", " Search", "purchase", "hover", None]),
                          st.sampled_from(["2026-01-01T10:00:00", "2026-01-02T11:00:00", "bad", None]),
                          st.sampled_from(["red shoes", "  ", "", None])), max_size=30))
def test_every_row_is_an_event_a_search_or_quarantined(rows):
    raw = pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "timestamp", "query"], dtype=object)
    events, files, offsets, searches, search_files, search_rows = split_searches(raw, "f.csv", 0, "search")
    clean, rejected = validate_events(events, files, TYPES, "string", "s", offsets)
    found, refused = (validate_searches(searches, search_files, "string", "s", search_rows) if searches is not None
                      else (pd.DataFrame(), pd.DataFrame()))
    assert len(clean) + len(found) + len(rejected) + len(refused) == len(raw)
    assert not clean[schema.EVENT].astype(str).str.strip().str.lower().eq("search").any()
    assert (found[schema.QUERY].str.len() > 0).all() if len(found) else True
    provenance = sorted([*rejected.get(schema.SOURCE_ROW, pd.Series(dtype=int)).tolist(),
                         *refused.get(schema.SOURCE_ROW, pd.Series(dtype=int)).tolist()])
    assert len(set(provenance)) == len(provenance) and all(0 <= row < len(raw) for row in provenance)


def test_last_session_lists_newest_first_by_user_with_text_ids_and_missing_times():
    """`homerank.homepage.last_session.last_session` by hand: rows in any order; per user (ids in sorted order) the
    items newest first, ties by catalogue position, a missing time last; items outside the catalogue dropped; a
    cart flag per entry and each user's session start."""
    from homerank.homepage.catalogue import Catalogue
    from homerank.homepage.last_session import last_session

    ids = np.array(["a", "b", "c", "d"], dtype=object)
    catalogue = Catalogue(ids, np.array(["X"] * 4, dtype=object), ids, np.ones(4, bool), np.full(4, None),
                          np.zeros(4, np.int64), np.arange(4), np.zeros(4), np.zeros(4))
    day = pd.Timestamp("2026-01-02")
    table = pd.DataFrame({
        schema.USER: ["u2", "u10", "u2", "u2", "u10", "u2"],
        schema.ITEM: ["b", "a", "d", "zz", "c", "a"],
        schema.LAST_TS: [day, day, day + pd.Timedelta(hours=1), day + pd.Timedelta(hours=2), pd.NaT, day],
        schema.EVENT: ["view", "cart", "cart", "view", "view", None],
        "session_start": [day - pd.Timedelta(hours=h) for h in (1, 3, 1, 1, 3, 1)],
    })
    last = last_session(table, catalogue)
    assert last.items.users.tolist() == ["u10", "u2"]  # "u10" < "u2" as text
    u10, u2 = (last.items.padded(last.items.rows(np.array([u], dtype=object)))[0].tolist() for u in ("u10", "u2"))
    assert u10 == [0, 2]  # a (a time) before c (no time)
    assert u2 == [3, 0, 1]  # d (newest), then a and b at the same time by position; zz is not in the catalogue
    assert last.carted.tolist() == [True, False, True, False, False]
    assert last.started(np.array(["u2", "u10", "nobody"], dtype=object)).astype(str).tolist() == [
        "2026-01-01T23:00:00.000000000", "2026-01-01T21:00:00.000000000", "NaT"]
