"""Typed configuration of the homepage (composed into the job config in `homerank.jobs.config`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from homerank.engine.config import StrictModel

SEGMENT_TITLE = "Popular with shoppers like you"
SectionKind = Literal["for_you", "because_you_viewed", "trending_in_category", "new_arrivals", "buy_again"]


class SectionConfig(StrictModel):
    kind: SectionKind
    title: str = Field(..., description="template; {item_title} and {category} are filled in, and from the shopper "
                       "profile {top_category} (the user's top category) and {segment_name}")
    slots: int = Field(8, ge=1)
    segment_title: str | None = Field(
        None, description="for_you: the title of the row of a user without a model embedding when it is filled "
        "with the favourites of the user's profile segment (a template like title); for_you sections default to "
        f"{SEGMENT_TITLE!r}, other kinds never use it")

    @model_validator(mode="after")
    def _segment_title_default(self) -> SectionConfig:
        # a config written before segment titles existed lists its sections without one: for_you still gets it
        if self.kind == "for_you" and "segment_title" not in self.model_fields_set:
            self.segment_title = SEGMENT_TITLE
        return self


class HomepageConfig(StrictModel):
    """The personalised homepage: ordered sections and the rules applied across the whole page."""

    enabled: bool = True
    sections: list[SectionConfig] = Field(default_factory=lambda: [
        SectionConfig(kind="for_you", title="Recommended for you", slots=10),
        SectionConfig(kind="because_you_viewed", title="Because you viewed {item_title}", slots=8),
        SectionConfig(kind="trending_in_category", title="Trending in {category}", slots=8),
        SectionConfig(kind="new_arrivals", title="New arrivals for you", slots=8),
        SectionConfig(kind="buy_again", title="Buy again", slots=6),
    ])
    max_per_category: int = Field(3, ge=1, description="at most this many items of one category per row "
                                  "(diversity: category_cap)")
    diversity: Literal["category_cap", "mmr"] = Field(
        "category_cap", description="per-row diversity: a cap per category, or maximal marginal relevance"
    )
    mmr_lambda: float = Field(0.7, ge=0, le=1, description="MMR trade-off: 1 = relevance only, 0 = diversity only")
    mmr_pool_factor: int = Field(5, ge=1, description="MMR picks a row from the top slots x this many candidates")
    merchandising: str | None = Field(
        None, description="CSV/Parquet of boosts and pins (rule, item_id|category, weight, section, slot, "
        "start, end); see homepage/merchandising.py"
    )
    trending_window_days: float = Field(7.0, gt=0)
    trending_half_life_days: float = Field(2.0, gt=0)
    new_arrival_days: float = Field(14.0, gt=0)
    repeat_purchase_categories: list[str] = Field(
        default_factory=lambda: ["Coffee", "Grocery", "Pets", "Beauty", "Baby"],
        description="categories where buy_again may show items bought before",
    )
    block_users: int = Field(8192, ge=1, description="users paged at once: each block's rows are built with array "
                             "operations and written as their own Parquet part")
    explain_history: int = Field(50, ge=1, description="explanations: the user's newest items searched for the one "
                                 "most similar to a recommended item")
    candidates: int = Field(500, ge=10, description="model candidates per user (and neighbours per viewed item) "
                            "before the page rules")
