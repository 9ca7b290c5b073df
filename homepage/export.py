"""The page frame as one JSON object per user (``homepage.jsonl``): the user's rows in page order, each with its
title and its slots (with each slot's ``explanation`` when the frame has one)."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd


def page_records(page: pd.DataFrame) -> Iterator[dict[str, Any]]:
    """``{"user_id", "sections": [{"section", "title", "items": [{"slot", "item_id", "score", "reason",
    "explanation"}]}]}`` per user (``explanation`` when ``page`` has the column), in the frame's order (``page`` is
    grouped by user, sections in page order, as the builder writes it)."""
    user, sections = None, []
    explained = "explanation" in page.columns
    for row in page.itertuples(index=False):
        if row.user_id != user:
            if user is not None:
                yield {"user_id": _plain(user), "sections": sections}
            user, sections = row.user_id, []
        if not sections or sections[-1]["section"] != row.section:
            sections.append({"section": row.section, "title": row.section_title, "items": []})
        item = {"slot": int(row.slot), "item_id": _plain(row.item_id), "score": _json_score(row.score),
                "reason": row.reason}
        if explained:
            item["explanation"] = row.explanation
        sections[-1]["items"].append(item)
    if user is not None:
        yield {"user_id": _plain(user), "sections": sections}


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value ``json`` can write."""
    return value.item() if hasattr(value, "item") else value


def _json_score(score: float) -> float | None:
    """Pinned slots have no model score: NaN in Parquet, null in JSON; others rounded to 6 decimals."""
    return None if math.isnan(score) else round(float(score), 6)


def jsonl_text(page: pd.DataFrame) -> str:
    """`page_records` of ``page`` as JSON Lines text (one line per user, each ending in a newline), byte for byte
    what ``json.dumps`` writes, built column-wise: each distinct id, title, section and reason is encoded once, and
    every slot's text is laid out as fixed pieces (a user's opening, a row's opening or the separator, the slot
    object, a row's and a user's closing), joined once."""
    count = len(page)
    if not count:
        return ""
    users, sections = page["user_id"].to_numpy(), page["section"].to_numpy()
    new_user = np.r_[True, users[1:] != users[:-1]]
    new_row = new_user | np.r_[True, sections[1:] != sections[:-1]]
    end_row, end_user = np.r_[new_row[1:], True], np.r_[new_user[1:], True]
    pieces = np.full((count, 10), "", dtype=object)
    pieces[new_user, 0] = '{"user_id": ' + _encoded(page["user_id"][new_user]) + ', "sections": ['
    pieces[new_row & ~new_user, 1] = ", "
    pieces[:, 2] = ", "
    pieces[new_row, 2] = ('{"section": ' + _encoded(page["section"][new_row]) + ', "title": '
                          + _encoded(page["section_title"][new_row]) + ', "items": [')
    pieces[:, 3] = _encoded(page["slot"], '{"slot": ', ', "item_id": ')
    pieces[:, 4] = _encoded(page["item_id"], "", ', "score": ')
    pieces[:, 5] = _encoded_scores(page["score"])
    explained = "explanation" in page.columns
    pieces[:, 6] = _encoded(page["reason"], ', "reason": ', "" if explained else "}")
    if explained:
        pieces[:, 7] = _encoded(page["explanation"], ', "explanation": ', "}")
    pieces[end_row, 8] = "]}"
    pieces[end_user, 9] = "]}\n"
    return "".join(pieces.ravel().tolist())


def _encoded_scores(scores: pd.Series) -> np.ndarray:
    """Each score's JSON text as `_json_score` and ``json.dumps`` write it (``repr`` of the float rounded to 6
    decimals, ``null`` for NaN), formatted once per distinct score."""
    codes, uniques = pd.factorize(scores, sort=False, use_na_sentinel=True)
    rounded = map(round, (value + 0.0 for value in uniques.tolist()), itertools.repeat(6))  # -0.0 as 0.0
    table = np.array(list(map(float.__repr__, rounded)) + ["null"], dtype=object)
    out = table[codes]  # code -1 (NaN: a pinned slot) takes the last entry
    values = scores.to_numpy(dtype=np.float64)
    out[(values == 0) & np.signbit(values)] = "-0.0"  # factorize takes -0.0 and 0.0 as one value
    return out


def _encoded(column: pd.Series, before: str = "", after: str = "") -> np.ndarray:
    """Each value's JSON text between ``before`` and ``after`` (object array), ``json.dumps`` called once per
    distinct value."""
    codes, uniques = pd.factorize(column, sort=False)
    table = np.array([before + json.dumps(_plain(value)) + after for value in uniques.tolist()], dtype=object)
    return table[codes]
