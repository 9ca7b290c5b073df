"""The section kinds: one function per kind returns the candidate sources for one user's row, and one registry,
``SECTION_KINDS``, states once how the page treats each kind (the row builder and the page-rule check both
read it).

    for_you               the model's ranking, then items by training popularity; users without a model embedding
                          get their profile segment's favourites first (``segment_title`` as the row's title)
    because_you_viewed    items closest in item-embedding cosine to the user's most recently viewed item
    trending_in_category  recency-weighted interaction counts in the user's top category (else the top
                          category of the whole log); exempt from the category cap: the row is one category
    new_arrivals          items created in the last N days, by the user's score (trending for cold users)
    buy_again             items bought before in repeat-purchase categories, newest first; exempt from the
                          category cap, and the only row that may show items the user bought
    related_to_searches   items nearest in the item text-feature space to the recency-weighted mean of the user's
                          newest queries (`homerank.homepage.searches`); exempt from the category cap: a query names
                          its topic
    continue_shopping     the items of the user's last session viewed, clicked or carted but not bought, most recent
                          first (`homerank.homepage.last_session`); exempt from the category cap: the user's own visit

A source is ``(positions, scores, reasons)``: catalogue positions in the order the row should take them,
their scores, and one reason for all of them or one per position. A function returns None when the user
gets no such row at all (no viewed item the model knows, no new arrivals, nothing to buy again).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from homerank.homepage.config import SectionConfig
from homerank.homepage.last_session import SESSION_REASON
from homerank.homepage.searches import SEARCH_REASON
from homerank.homepage.signals import PageSignals

Source = tuple[np.ndarray, np.ndarray, list[str] | str]
SEGMENT_REASON = "for_you:fallback_segment_popularity"  # + ":<segment>"


@dataclass(frozen=True)
class RowCandidates:
    """One user's candidates for one row: sources in order, and the values for the title template."""

    sources: list[Source]
    title_values: dict[str, str] = field(default_factory=dict)
    segment_title: bool = False  # the row is filled from the user's segment: the section's segment_title applies


def for_you(user: Any, signals: PageSignals) -> RowCandidates:
    row = signals.model_row.get(user)
    sources: list[Source] = []
    from_segment = False
    lists = signals.candidates
    line = lists.lines(np.array([row]))[0] if row is not None and lists is not None else -1
    if line >= 0:
        sources.append((lists.positions[line], lists.scores[line], "for_you:model_score"))
    elif row is None:
        segment = signals.segment.get(user)
        if segment is not None and int(segment) in signals.segment_favourites:
            positions, users = signals.segment_favourites[int(segment)]
            sources.append((positions, users, f"{SEGMENT_REASON}:{int(segment)}"))
            from_segment = True
    by_popularity = signals.by_popularity
    sources.append((by_popularity, signals.catalogue.popularity[by_popularity], "for_you:fallback_popularity"))
    return RowCandidates(sources, segment_title=from_segment)


def because_you_viewed(user: Any, signals: PageSignals) -> RowCandidates | None:
    anchor = signals.last_viewed.get(user)
    if anchor is None or anchor not in signals.neighbours:
        return None
    positions, cosines = signals.neighbours[anchor]
    catalogue = signals.catalogue
    reason = f"because_you_viewed:similar_to:{catalogue.item_ids[anchor]}"
    return RowCandidates([(positions, cosines, reason)], {"item_title": catalogue.title[anchor]})


def trending_in_category(user: Any, signals: PageSignals) -> RowCandidates:
    known = user in signals.top_category.index
    category = signals.top_category.get(user, signals.global_category)
    reason = "trending_in_category:user_top_category" if known else "trending_in_category:fallback_global"
    ordered = signals.trending_by_category[category]
    return RowCandidates([(ordered, signals.catalogue.trending[ordered], f"{reason}:{category}")],
                         {"category": category})


def new_arrivals(user: Any, signals: PageSignals) -> RowCandidates | None:
    positions = signals.new_positions
    if not positions.size:
        return None
    row = signals.model_row.get(user)
    if row is not None:
        scores = signals.new_scores[row]
        order = np.argsort(-scores, kind="stable")
        return RowCandidates([(positions[order], scores[order], list(signals.new_reason[order]))])
    trending = signals.catalogue.trending[positions]
    order = np.argsort(-trending, kind="stable")
    return RowCandidates([(positions[order], trending[order], "new_arrival:fallback_trending")])


def buy_again(user: Any, signals: PageSignals) -> RowCandidates | None:
    positions = signals.buy_again.get(user)
    if positions is None:
        return None
    return RowCandidates([(positions, np.zeros(positions.size), "buy_again:purchased_before")])


def related_to_searches(user: Any, signals: PageSignals) -> RowCandidates | None:
    history = signals.searches
    if history is None:
        return None
    users = np.array([user], dtype=object)
    positions, scores, group = history.candidates_of(users)
    if group[0] < 0:
        return None
    keep = positions[group[0]] >= 0
    return RowCandidates([(positions[group[0]][keep], scores[group[0]][keep], SEARCH_REASON)],
                         {"query": history.newest_query(users)[0]})


def continue_shopping(user: Any, signals: PageSignals) -> RowCandidates | None:
    last = signals.last_session
    if last is None:
        return None
    lists, group = last.lists(np.array([user], dtype=object))
    if group[0] < 0:
        return None
    positions = lists[group[0]][lists[group[0]] >= 0]
    return RowCandidates([(positions, np.zeros(positions.size), SESSION_REASON)])


@dataclass(frozen=True)
class SectionSpec:
    """How the page treats one kind of row. ``category_cap`` False exempts the row from per-row diversity
    (the category cap, or MMR); ``shows_purchased`` lets the row show items the user bought."""

    candidates: Callable[[Any, PageSignals], RowCandidates | None]
    category_cap: bool = True
    shows_purchased: bool = False


SECTION_KINDS: dict[str, SectionSpec] = {
    "for_you": SectionSpec(for_you),
    "because_you_viewed": SectionSpec(because_you_viewed),
    "trending_in_category": SectionSpec(trending_in_category, category_cap=False),  # one category by definition
    "new_arrivals": SectionSpec(new_arrivals),
    "buy_again": SectionSpec(buy_again, category_cap=False, shows_purchased=True),  # the user's own history
    "related_to_searches": SectionSpec(related_to_searches, category_cap=False),  # the query names the topic
    "continue_shopping": SectionSpec(continue_shopping, category_cap=False),  # the user's own last visit
}
UNCAPPED_KINDS = tuple(kind for kind, spec in SECTION_KINDS.items() if not spec.category_cap)
PURCHASE_KINDS = tuple(kind for kind, spec in SECTION_KINDS.items() if spec.shows_purchased)


def section_title(section: SectionConfig, values: dict[str, str], segment_title: bool = False) -> str:
    """The section's title template (its ``segment_title`` when asked and set) filled with ``values``; a template
    naming an unknown field stays as is."""
    template = section.segment_title if segment_title and section.segment_title else section.title
    return fill_title(template, values)


def fill_title(template: str, values: dict[str, Any]) -> str:
    try:
        return template.format(**values)
    except (KeyError, IndexError, ValueError):
        return template


def format_titles(templates: np.ndarray, values: dict[str, np.ndarray]) -> np.ndarray:
    """Each row's template (B,) filled with its row of ``values`` (each (B,)): one ``str.format`` per distinct
    (template, values) combination, not per row. Returns an object array (B,)."""
    if not templates.size:
        return templates.astype(object)
    frame = pd.DataFrame({"_template": templates, **values})
    codes = frame.groupby(list(frame.columns), sort=False, dropna=False).ngroup().to_numpy()
    _, first = np.unique(codes, return_index=True)
    records = frame.iloc[first].to_dict("records")
    table = np.array([fill_title(record.pop("_template"), record) for record in records] + [""], dtype=object)
    return table[codes]
