"""The page frame as one JSON object per user (``homepage.jsonl``): the user's rows in page order, each with its
title and its slots (with each slot's ``explanation`` when the frame has one)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


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
    what ``json.dumps`` writes (`jsonl_bytes`, decoded)."""
    return bytes(jsonl_bytes(page)).decode("utf-8")


def jsonl_bytes(page: pd.DataFrame) -> memoryview:
    """`jsonl_text` as UTF-8 bytes, without a Python string of the text: built column-wise in Arrow, each distinct
    id, title, section and reason encoded once, every slot's text the element-wise join of fixed pieces (a user's
    opening, a row's opening or the separator, the slot object, a row's and a user's closing); the joined strings
    of the slots, which Arrow lays out back to back in one buffer, are the text, handed out as a view of that buffer
    (a file's ``write`` takes it as it is)."""
    count = len(page)
    if not count:
        return memoryview(b"")
    users, sections = page["user_id"].to_numpy(), page["section"].to_numpy()
    new_user = np.r_[True, users[1:] != users[:-1]]
    new_row = new_user | np.r_[True, sections[1:] != sections[:-1]]
    end_row, end_user = np.r_[new_row[1:], True], np.r_[new_user[1:], True]
    explained = "explanation" in page.columns
    pieces = [
        _encoded(page["user_id"], '{"user_id": ', ', "sections": [', where=new_user),
        _constant(", ", new_row & ~new_user),
        _encoded(page["section"], '{"section": ', ', "title": ', where=new_row),
        _encoded(page["section_title"], "", ', "items": [', where=new_row),
        _constant(", ", ~new_row),
        _encoded(page["slot"], '{"slot": ', ', "item_id": '),
        _encoded(page["item_id"], "", ', "score": '),
        _encoded_scores(page["score"]),
        _encoded(page["reason"], ', "reason": ', "" if explained else "}"),
        _encoded(page["explanation"], ', "explanation": ', "}") if explained else pa.scalar("", pa.large_string()),
        _constant("]}", end_row),
        _constant("]}\n", end_user),
    ]
    joined = pc.binary_join_element_wise(*pieces, pa.scalar("", pa.large_string()))
    if isinstance(joined, pa.ChunkedArray):
        joined = joined.combine_chunks()
    offsets = np.frombuffer(joined.buffers()[1], dtype=np.int64)[joined.offset : joined.offset + count + 1]
    return memoryview(joined.buffers()[2])[int(offsets[0]) : int(offsets[-1])]


def _constant(text: str, where: np.ndarray) -> pa.Array:
    """``text`` where ``where`` (n,), "" elsewhere: a take from the two strings (no (n,) array of Python text)."""
    return pa.array(["", text], pa.large_string()).take(pa.array(np.asarray(where, dtype=np.int8)))


SCORE_FAST_BOUND = 1e3  # |score| below this: formatted from integer millionths (see `_encoded_scores`)


def _encoded_scores(scores: pd.Series) -> pa.Array:
    """Each score's JSON text as `_json_score` and ``json.dumps`` write it (``repr`` of ``round(score, 6)``, ``null``
    for NaN), without a Python call per score for nearly all of them.

    For |x| < 1000 whose x * 10^6 is not within 10^-3 of a half (where the product's error, < 10^-7, cannot change
    the rounding), ``round(x, 6)`` is n / 10^6 with n = rint(x * 10^6), and its shortest repr is that decimal with
    trailing zeros dropped (at most 9 significant digits, so no shorter string reads back as the same double):
    sign, n // 10^6, ".", the 6 digits of n % 10^6 without trailing zeros ("0" when none are left). Python writes
    0 < |round(x, 6)| < 10^-4 in exponent notation: those, the near-halves, larger scores and infinities are
    formatted by Python, one call per distinct value."""
    values = scores.to_numpy(dtype=np.float64)
    finite = np.isfinite(values)
    scaled = np.where(finite, values, 0.0) * 1e6
    units = np.rint(scaled)
    fast = finite & (np.abs(values) < SCORE_FAST_BOUND) & (np.abs(np.abs(scaled - np.floor(scaled)) - 0.5) > 1e-3)
    fast &= (units == 0) | (np.abs(units) >= 100)
    magnitude = np.abs(units).astype(np.int64)
    whole = pa.array(magnitude // 1_000_000).cast(pa.large_string())
    digits = pc.utf8_rtrim(pc.utf8_lpad(pa.array(magnitude % 1_000_000).cast(pa.large_string()), 6, "0"), "0")
    digits = pc.if_else(pc.equal(digits, ""), pa.scalar("0", pa.large_string()), digits)
    negative = np.signbit(values)  # -0.0, and a negative score that rounds to 0, are "-0.0" as round() keeps the sign
    sign = pa.array(np.where(negative, "-", ""), pa.large_string())
    text = pc.binary_join_element_wise(sign, whole, pa.scalar(".", pa.large_string()), digits,
                                       pa.scalar("", pa.large_string()))
    slow = np.flatnonzero(~fast)
    if slow.size:
        codes, uniques = pd.factorize(values[slow], sort=False, use_na_sentinel=True)
        table = np.array([_score_text(value) for value in uniques.tolist()] + ["null"], dtype=object)
        texts = table[codes]
        texts[(values[slow] == 0) & negative[slow]] = "-0.0"  # factorize takes -0.0 and 0.0 as one value
        text = pc.replace_with_mask(text, pa.array(~fast), pa.array(texts, pa.large_string()))
    return text


def _score_text(value: float) -> str:
    """One score as ``json.dumps(_json_score(value))`` writes it (NaN: "null")."""
    return json.dumps(_json_score(value))


def _encoded(column: pd.Series, before: str = "", after: str = "", where: np.ndarray | None = None) -> pa.Array:
    """Each value's JSON text between ``before`` and ``after`` (only where ``where``, "" elsewhere), ``json.dumps``
    called once per distinct value."""
    codes, uniques = pd.factorize(column, sort=False)
    if isinstance(uniques, np.ndarray) and np.issubdtype(uniques.dtype, np.integer):
        # an integer's JSON text is its decimal digits, which Arrow's cast writes for all of them at once
        digits = pa.array(uniques).cast(pa.large_string())
        table = pa.concat_arrays([pc.binary_join_element_wise(before, digits, after, ""),
                                  pa.array([""], pa.large_string())])
    else:
        table = pa.array([before + json.dumps(_plain(value)) + after for value in uniques.tolist()] + [""],
                         pa.large_string())
    if where is not None:
        codes = np.where(where, codes, len(uniques))
    return table.take(pa.array(codes))
