"""Typed configuration of the engine stages (composed into the job config in `jobs.config`)."""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

log = logging.getLogger(__name__)

DEFAULT_EVENT_TYPES = ["view", "click", "cart", "purchase"]
DEFAULT_WEIGHTS = {"view": 1.0, "click": 2.0, "cart": 4.0, "purchase": 8.0}


class StrictModel(BaseModel):
    """Base for every config section: unknown keys and wrong types are errors, and so is a float that is not
    finite (``.inf``, ``.nan``), in lists and mappings too (a setting that may be unlimited takes ``null``).

    Old configs keep working across renames: ``renamed_keys`` maps an old key of the section to its new name
    (the value moves over, with a warning); ``retired_keys`` maps a removed key to the value it may still
    carry harmlessly (its old default: dropped with a warning) and why it went (any other value is an error).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
    section: ClassVar[str] = "config"
    renamed_keys: ClassVar[dict[str, str]] = {}
    retired_keys: ClassVar[dict[str, tuple[Any, str]]] = {}

    @model_validator(mode="before")
    @classmethod
    def _old_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not (cls.renamed_keys or cls.retired_keys):
            return data
        data = dict(data)
        for old, new in cls.renamed_keys.items():
            if old in data:
                if new in data:
                    raise ValueError(f"{cls.section}.{old} is the old name of {cls.section}.{new}; give only {new}")
                log.warning("config: %s.%s is now called %s.%s", cls.section, old, cls.section, new)
                data[new] = data.pop(old)
        for old, (harmless, why) in cls.retired_keys.items():
            if old in data:
                value = data.pop(old)
                if value != harmless:
                    raise ValueError(f"{cls.section}.{old} was removed: {why}")
                log.warning("config: %s.%s was removed (%s); ignoring it", cls.section, old, why)
        return data


class IngestConfig(StrictModel):
    """How logs are read and validated."""

    format: Literal["auto", "parquet", "csv", "lightgcn"] = Field(
        "auto",
        description="auto = by file extension (.parquet/.pq or .csv); lightgcn = folder with train.txt, "
        "test.txt and optional valid.txt (a given split)",
    )
    catalogue: str | None = Field(None, description="optional item catalogue (Parquet or CSV)")
    event_types: list[str] = Field(default_factory=lambda: list(DEFAULT_EVENT_TYPES), min_length=1,
                                   description="the interaction types a row may have (at least one)")
    timestamp_unit: Literal["s", "ms", "us", "ns"] = Field(
        "s", description="unit of numeric (epoch) timestamps; strings and datetimes are parsed as is"
    )
    pseudonymise_user_ids: bool = Field(
        False, description="replace user ids by a keyed hash (key: $HOMERANK_PSEUDONYM_KEY) at ingest"
    )
    partition_rows: int = Field(
        2_000_000, ge=1, description="rows per dask partition when reading Parquet (whole row groups; a large file "
        "is many partitions)"
    )
    csv_block_bytes: int = Field(
        256 * 2**20, ge=1024, description="CSV files larger than this are read in blocks of about this many bytes, "
        "cut at line ends (a quoted field holding a line break is then not supported)"
    )
    id_dtype: Literal["auto", "int64", "string"] = Field(
        "auto", description="auto: int64 when every file is Parquet with integer or float ids, else string; either "
        "way 1000398, 1000398.0 and '1000398' are one id (see engine/ingest.py)"
    )
    future_tolerance_hours: float | None = Field(
        24.0, ge=0, le=876_000, description="events later than the wall clock at ingest (UTC) plus this many hours "
        "are quarantined as future_timestamp (24 h covers any time-zone offset); null turns the check off"
    )
    search_event: str | None = Field(
        "search", min_length=1, description="the event_type of search rows when the log has a `query` column: they "
        "need user_id, timestamp and a non-empty query (item_id may be empty), are not interactions (no edges, no "
        "weights) and go to etl/searches/; null: no searches (such rows are unknown_event_type)"
    )

    @model_validator(mode="after")
    def _search_is_not_an_interaction(self) -> IngestConfig:
        if self.search_event is not None:
            name = self.search_event.strip().lower()
            if name in [t.strip().lower() for t in self.event_types]:
                raise ValueError(f"ingest.search_event {self.search_event!r} is also in ingest.event_types: searches "
                                 "are not interactions; remove it from event_types (or set search_event: null)")
        return self


class InteractionConfig(StrictModel):
    """Event weights, time decay and the k-core filter."""

    section: ClassVar[str] = "interactions"
    renamed_keys: ClassVar[dict[str, str]] = {"weights": "event_weights"}

    event_weights: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_WEIGHTS), description="weight of one event of each type"
    )
    half_life_days: float | None = Field(
        None, gt=0, description="exponential time decay: weight * 0.5 ** (age_days / half_life_days)"
    )
    min_user_interactions: int = Field(5, ge=1, description="k-core: min distinct items per user")
    min_item_interactions: int = Field(5, ge=1, description="k-core: min distinct users per item")

    @field_validator("event_weights")
    @classmethod
    def _positive_weights(cls, weights: dict[str, float]) -> dict[str, float]:
        # an edge's weight is the sum of its events' weights: zero or negative weights remove edges or give
        # negative ones, which graph.edge_weight weight/log1p turn into a graph without (valid) edges
        for event_type, weight in weights.items():
            if weight <= 0:
                raise ValueError(f"the weight of {event_type!r} must be > 0 (got {weight}): an edge's weight is the "
                                 "sum of its events' weights, and graph.edge_weight weight/log1p need positive "
                                 "ones; drop the type from ingest.event_types to ignore it")
        return weights


class SplitConfig(StrictModel):
    """Per-user temporal split. An int holds out the last N items of each user, a float the last fraction."""

    test: int | float = Field(0.2, description="last N (int) or last fraction (0<f<1) of each user's items")
    valid: int | float = Field(0.1, description="taken before the test items, same rule; 0 disables")
    min_train: int = Field(1, ge=1, description="never leave a user with fewer training items than this")

    @model_validator(mode="after")
    def _check_fractions(self) -> SplitConfig:
        for name in ("test", "valid"):
            value = getattr(self, name)
            if isinstance(value, float) and not 0.0 <= value < 1.0:
                raise ValueError(f"split.{name} as a fraction must be in [0, 1) (got {value})")
            if isinstance(value, int) and value < 0:
                raise ValueError(f"split.{name} as a count must be >= 0 (got {value})")
        return self


class GraphConfig(StrictModel):
    """How edge weights enter the adjacency before symmetric normalisation."""

    edge_weight: Literal["binary", "weight", "log1p"] = Field(
        "binary", description="A_ui = 1, w_ui or log(1 + w_ui) before D^-1/2 A D^-1/2"
    )


class ProfilesConfig(StrictModel):
    """Shopper profiles written by the ETL (`homerank.engine.profiles`)."""

    section: ClassVar[str] = "profiles"

    enabled: bool = Field(True, description="write etl/profiles/ (one row per user) and the segments")
    segments: int = Field(6, ge=1, le=64, description="k of the k-means segmentation")
    sample_users: int = Field(200_000, ge=100, description="users (a seeded sample) the segmentation is fitted on")
    top_categories: int = Field(3, ge=1, le=10, description="top categories (with shares) per user")
    session_gap_minutes: float = Field(30.0, gt=0, description="a gap longer than this starts a new session when "
                                       "the log has no session_id (sessions, and etl/last_session/)")
    top_query_terms: int = Field(3, ge=1, le=20, description="the user's most frequent search terms kept in "
                                 "top_query_terms (logs with searches)")
    last_session: bool = Field(True, description="write etl/last_session/: the items of each user's last session "
                               "that were not bought there (the homepage's continue_shopping section)")
