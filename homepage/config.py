"""Typed configuration of the homepage (composed into the job config in `homerank.jobs.config`)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from homerank.engine.config import StrictModel
from homerank.gnn.text_config import HASHED_TFIDF, WORDLLAMA, WORDLLAMA_DIMS, TextFeaturesConfig

SEGMENT_TITLE = "Popular with shoppers like you"
SectionKind = Literal["for_you", "because_you_viewed", "trending_in_category", "new_arrivals", "buy_again",
                      "related_to_searches", "continue_shopping"]


class SectionConfig(StrictModel):
    kind: SectionKind
    title: str = Field(..., description="template; {item_title} and {category} are filled in, from the shopper "
                       "profile {top_category} (the user's top category) and {segment_name}, and in "
                       "related_to_searches rows {query} (the user's newest search)")
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


class SearchSectionConfig(StrictModel):
    """The related_to_searches section (`homerank.homepage.searches`): the user's newest queries and the catalogue's
    items embedded by one text encoder (`homerank.gnn.text_features`, queries embedded like titles), the items
    nearest the recency-weighted mean of the queries.

    The encoder is named, never swapped on its own: hashed_tfidf (scikit-learn, fitted on the catalogue's texts,
    nothing to install) by default, or wordllama_l2_supercat (pip install 'homerank[text]')."""

    section: ClassVar[str] = "homepage.search"

    encoder: Literal["wordllama_l2_supercat", "hashed_tfidf"] = Field(
        HASHED_TFIDF, description="text encoder of the queries and the item texts: hashed_tfidf (fitted on the "
        "catalogue) or wordllama_l2_supercat (pip install 'homerank[text]')")
    dim: int = Field(256, ge=1, le=4096, description="embedding size (64, 128 or 256 for wordllama_l2_supercat)")
    cache_dir: Path | None = Field(None, description="vectors cached by content hash (items and queries); null = no "
                                   "cache")
    batch_size: int = Field(1024, ge=1, description="texts encoded per batch")
    history: int = Field(10, ge=1, description="the user's newest searches that count")
    half_life_days: float = Field(7.0, gt=0, description="a query's weight 0.5 ** (age_days / half_life_days), age "
                                  "before the run's reference time")
    candidates: int = Field(100, ge=1, description="nearest items fetched per user before the page rules")
    min_similarity: float = Field(0.0, ge=-1, lt=1, description="items whose cosine to the user's queries is not "
                                  "above this are never related")

    @model_validator(mode="after")
    def _dim_fits_encoder(self) -> SearchSectionConfig:
        if self.encoder == WORDLLAMA and self.dim not in WORDLLAMA_DIMS:
            raise ValueError(f"homepage.search.dim must be one of {list(WORDLLAMA_DIMS)} for {WORDLLAMA} "
                             f"(got {self.dim}), or choose encoder: {HASHED_TFIDF}")
        return self

    def text_features(self) -> TextFeaturesConfig:
        """The settings as `homerank.gnn.text_features` takes them."""
        return TextFeaturesConfig(enabled=True, encoder=self.encoder, dim=self.dim, cache_dir=self.cache_dir,
                                  batch_size=self.batch_size)


class HomepageConfig(StrictModel):
    """The personalised homepage: ordered sections and the rules applied across the whole page."""

    enabled: bool = True
    sections: list[SectionConfig] = Field(default_factory=lambda: [
        SectionConfig(kind="for_you", title="Recommended for you", slots=10),
        SectionConfig(kind="continue_shopping", title="Continue where you left off", slots=8),
        SectionConfig(kind="because_you_viewed", title="Because you viewed {item_title}", slots=8),
        SectionConfig(kind="related_to_searches", title="Related to your searches", slots=8),
        SectionConfig(kind="trending_in_category", title="Trending in {category}", slots=8),
        SectionConfig(kind="new_arrivals", title="New arrivals for you", slots=8),
        SectionConfig(kind="buy_again", title="Buy again", slots=6),
    ], min_length=1, description="the page's rows in order (at least one; `homepage.enabled: false` builds no page)")
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
    processes: int | None = Field(None, ge=1, description="worker processes that build the blocks (forked: they "
                                  "share the page-wide signals); null: one per CPU core; 1: in the stage's process. "
                                  "Always 1 when the model runs on a GPU")
    explain_history: int = Field(50, ge=1, description="explanations: the user's newest items searched for the one "
                                 "most similar to a recommended item")
    candidates: int = Field(500, ge=10, description="model candidates per user (and neighbours per viewed item) "
                            "before the page rules")
    search: SearchSectionConfig = Field(default_factory=SearchSectionConfig, description="related_to_searches: "
                                        "the text encoder and the weighting of the user's queries")
