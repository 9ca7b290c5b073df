"""Column names of the behaviour log, the item catalogue and the engine's own tables."""

from __future__ import annotations

USER, ITEM, EVENT, TS = "user_id", "item_id", "event_type", "timestamp"
SESSION, VALUE = "session_id", "value"
QUERY = "query"  # the text of a search event (``ingest.search_event``); searches are not interactions

REQUIRED_EVENT_COLUMNS: tuple[str, ...] = (USER, ITEM, EVENT, TS)
OPTIONAL_EVENT_COLUMNS: tuple[str, ...] = (SESSION, VALUE)

CATALOGUE_REQUIRED: tuple[str, ...] = (ITEM,)
CATALOGUE_OPTIONAL: tuple[str, ...] = ("category", "price", "title", "created_at", "in_stock")

# provenance columns added at ingest, carried into quarantine files
SOURCE_FILE, SOURCE_ROW, REASON = "source_file", "source_row", "reason"

# engine tables
USER_INDEX, ITEM_INDEX = "user_index", "item_index"
WEIGHT, FIRST_TS, LAST_TS = "weight", "first_ts", "last_ts"


def count_column(event_type: str) -> str:
    """Per-edge count column of one event type, e.g. ``n_purchase``."""
    return f"n_{event_type}"
