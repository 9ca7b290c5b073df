"""The page frame as one JSON object per user (``homepage.jsonl``): the user's rows in page order, each with its
title and its slots."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import pandas as pd


def page_records(page: pd.DataFrame) -> Iterator[dict[str, Any]]:
    """``{"user_id", "sections": [{"section", "title", "items": [{"slot", "item_id", "score", "reason"}]}]}`` per
    user, in the frame's order (``page`` is grouped by user, sections in page order, as the builder writes it)."""
    user, sections = None, []
    for row in page.itertuples(index=False):
        if row.user_id != user:
            if user is not None:
                yield {"user_id": _plain(user), "sections": sections}
            user, sections = row.user_id, []
        if not sections or sections[-1]["section"] != row.section:
            sections.append({"section": row.section, "title": row.section_title, "items": []})
        sections[-1]["items"].append({"slot": int(row.slot), "item_id": _plain(row.item_id),
                                      "score": _json_score(row.score), "reason": row.reason})
    if user is not None:
        yield {"user_id": _plain(user), "sections": sections}


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value ``json`` can write."""
    return value.item() if hasattr(value, "item") else value


def _json_score(score: float) -> float | None:
    """Pinned slots have no model score: NaN in Parquet, null in JSON; others rounded to 6 decimals."""
    return None if math.isnan(score) else round(float(score), 6)


def jsonl_text(page: pd.DataFrame) -> str:
    """`page_records` of ``page`` as JSON Lines text (one line per user, each ending in a newline)."""
    return "".join(json.dumps(record) + "\n" for record in page_records(page))
