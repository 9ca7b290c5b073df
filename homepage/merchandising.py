"""Merchandising rules for the homepage: boosts and pins read from a file (CSV or Parquet) that a
merchandising team edits, one rule per row.

Columns (``rule`` plus exactly one of ``item_id`` / ``category`` per row; the others optional):

    rule      boost | pin
    item_id   the item the rule targets                     (pins need an item)
    category  every item of this category                   (boosts only)
    weight    boost only: added to the item's z-scored model score within a row, so +1 lifts an item by one
              standard deviation of that row's candidate scores; negative weights demote
    section   the section kind the rule applies to; empty = every section (boosts) — required for pins
    slot      pins only: the 1-based slot the item takes in that section
    start     first day the rule is active (inclusive; empty = always)
    end       last day the rule is active (inclusive; empty = open-ended)

A rule is active when ``start <= as_of <= end`` where ``as_of`` is the run's reference time (the newest
event in the log). Invalid rows are user errors naming the file, the row (1-based data row, as a spreadsheet
shows it after the header) and the column; nothing is dropped silently. Item ids take the run's id form: 12, 12.0
(a Parquet float column, or a CSV written from one) and "12" name the same item.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from homerank.engine.errors import HomerankError
from homerank.engine.ids import canonical_ids

RULES = ("boost", "pin")
COLUMNS = ("rule", "item_id", "category", "weight", "section", "slot", "start", "end")


@dataclass(frozen=True)
class Pin:
    """One active pin: catalogue ``position`` at 1-based ``slot`` of section ``section``; ``rule`` = file row."""

    section: str
    slot: int
    position: int
    rule: int


@dataclass
class Merchandising:
    """Active rules, resolved to catalogue positions. ``boosts[section]`` is a (n_catalogue,) weight vector
    (the key ``"*"`` holds rules for every section); ``stats`` counts rules read, active and inactive."""

    boosts: dict[str, np.ndarray] = field(default_factory=dict)
    pins: list[Pin] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)

    def boost_for(self, section: str) -> np.ndarray | None:
        """Summed boost weights for one section kind, or None when no active boost touches it."""
        parts = [self.boosts[key] for key in ("*", section) if key in self.boosts]
        if not parts:
            return None
        return np.sum(parts, axis=0)

    def pins_for(self, section: str) -> list[Pin]:
        return sorted((p for p in self.pins if p.section == section), key=lambda p: p.slot)

    @property
    def pinned_positions(self) -> set[int]:
        return {p.position for p in self.pins}


def _read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise HomerankError(f"{path}: merchandising file not found (homepage.merchandising)")
    try:
        if path.suffix.lower() in {".parquet", ".pq"}:
            table = pd.read_parquet(path)
        else:
            from homerank.engine.ingest import refuse_malformed_csv

            refuse_malformed_csv(str(path), "merchandising file")
            table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except HomerankError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parser failure is a bad user file
        raise HomerankError(f"{path}: cannot read the merchandising file ({type(exc).__name__})") from None
    unknown = [number for number, column in enumerate(table.columns, start=1) if column not in COLUMNS]
    if unknown:
        # named by position, never by its text: when the file is not a merchandising table at all (a wrong path),
        # the "header" is that file's first line, whatever it holds
        close = difflib.get_close_matches(str(table.columns[unknown[0] - 1]).lower(), COLUMNS, n=1, cutoff=0.8)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise HomerankError(f"{path}: header column {unknown[0]} of {len(table.columns)}: not a merchandising "
                            f"column (expected some of {', '.join(COLUMNS)}){hint}")
    if "rule" not in table.columns or not ({"item_id", "category"} & set(table.columns)):
        raise HomerankError(f"{path}: needs a 'rule' column and an 'item_id' or 'category' column")
    table = table.astype(object).where(table.notna(), "")
    return table.map(lambda v: str(v).strip())


def _run_item_ids(column: pd.Series, item_ids: np.ndarray) -> pd.Series:
    """The file's item ids (stripped text) in the text form of the run's ids, so that 12, 12.0 (a Parquet float
    column, or a CSV written from one) and "12" all name item 12 (`homerank.engine.ingest.canonical_ids`). Text
    that cannot be one of the run's ids is kept as written: it is then reported as an unknown item."""
    form = "int64" if np.issubdtype(item_ids.dtype, np.integer) else "string"
    canonical, bad = canonical_ids(column, form)
    return canonical.astype(str).where(~bad, column)


def _day(value: str, path: Path, row: int, column: str) -> pd.Timestamp | None:
    if not value:
        return None
    stamp = pd.to_datetime(value, errors="coerce")
    if pd.isna(stamp):
        raise HomerankError(f"{path}: row {row}: column {column!r}: not a date: {value!r}")
    return stamp.tz_localize(None) if stamp.tzinfo is not None else stamp


def load_merchandising(path: str | Path, item_ids: np.ndarray, categories: np.ndarray, sections: list[str],
                       as_of: pd.Timestamp) -> Merchandising:
    """Validate every row and keep the rules active at ``as_of``, resolved against the catalogue."""
    path = Path(path)
    table = _read_table(path)
    if "item_id" in table.columns:
        table["item_id"] = _run_item_ids(table["item_id"], item_ids)
    position_of = {str(item): i for i, item in enumerate(item_ids.tolist())}
    known_categories = set(categories.tolist())
    out = Merchandising(stats={"rules": len(table), "active_boosts": 0, "active_pins": 0, "inactive": 0})
    as_of = as_of.tz_localize(None) if as_of.tzinfo is not None else as_of
    pinned_slots: set[tuple[str, int]] = set()
    for offset, record in enumerate(table.to_dict("records")):
        row = offset + 1

        def fail(column: str, message: str, row: int = row) -> HomerankError:
            return HomerankError(f"{path}: row {row}: column {column!r}: {message}")

        rule = record.get("rule", "").lower()
        if rule not in RULES:
            raise fail("rule", f"expected one of {', '.join(RULES)}, got {record.get('rule', '')!r}")
        item, category = record.get("item_id", ""), record.get("category", "")
        if bool(item) == bool(category):
            raise fail("item_id", "give exactly one of item_id or category")
        if item and item not in position_of:
            raise fail("item_id", f"unknown item {item!r} (not in the catalogue or the log)")
        if category and category not in known_categories:
            raise fail("category", f"unknown category {category!r}")
        section = record.get("section", "")
        if section and section not in sections:
            raise fail("section", f"{section!r} is not a configured section ({', '.join(sections)})")
        start, end = _day(record.get("start", ""), path, row, "start"), _day(record.get("end", ""), path, row, "end")
        if start is not None and end is not None and end < start:
            raise fail("end", "ends before it starts")
        if rule == "pin":
            if not item:
                raise fail("item_id", "a pin needs an item_id")
            if not section:
                raise fail("section", "a pin needs the section it is pinned in")
            try:
                slot = int(record.get("slot", ""))
            except ValueError:
                raise fail("slot", "a pin needs a whole-number slot >= 1") from None
            if slot < 1:
                raise fail("slot", "a pin needs a whole-number slot >= 1")
        else:
            try:
                weight = float(record.get("weight", ""))
            except ValueError:
                raise fail("weight", "a boost needs a numeric weight") from None
            if not math.isfinite(weight):
                raise fail("weight", "a boost needs a finite weight")
        # inclusive days: a date without a time of day lasts until its end
        last = None if end is None else (end + pd.Timedelta(days=1) if end == end.normalize() else end)
        if (start is not None and as_of < start) or (last is not None and as_of >= last):
            out.stats["inactive"] += 1
            continue
        if rule == "pin":
            if (section, slot) in pinned_slots:
                raise fail("slot", f"slot {slot} of {section!r} is already pinned by an active rule")
            pinned_slots.add((section, slot))
            out.pins.append(Pin(section, slot, position_of[item], row))
            out.stats["active_pins"] += 1
        else:
            key = section or "*"
            vector = out.boosts.setdefault(key, np.zeros(len(item_ids)))
            if item:
                vector[position_of[item]] += weight
            else:
                vector[categories == category] += weight
            out.stats["active_boosts"] += 1
    return out
