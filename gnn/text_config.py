"""Typed configuration of the item text features (gnn.text_features); wired into the job config separately."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from homerank.engine.config import StrictModel

WORDLLAMA = "wordllama_l2_supercat"  # static token embeddings shipped inside the `wordllama` wheel (extra `text`)
HASHED_TFIDF = "hashed_tfidf"  # no model: hashed TF-IDF + a seeded Gaussian random projection (scikit-learn)
ENCODERS = (WORDLLAMA, HASHED_TFIDF)
WORDLLAMA_DIMS = (64, 128, 256)  # Matryoshka prefixes of the 256-d weights in the wheel


class TextFeaturesConfig(StrictModel):
    """Item text features: each item's "title. category. description" embedded into ``dim`` numbers.

    The encoder is always named: the language model (``wordllama_l2_supercat``, install ``homerank[text]``) or
    the cheap ``hashed_tfidf``. Nothing falls back from one to the other on its own: a configured model that is
    not installed is an error that says what to do.
    """

    section: ClassVar[str] = "text_features"

    enabled: bool = False
    encoder: Literal["wordllama_l2_supercat", "hashed_tfidf"] = Field(
        WORDLLAMA, description="wordllama_l2_supercat = WordLlama static embeddings shipped in the wheel (pip "
        "install 'homerank[text]'); hashed_tfidf = hashed TF-IDF fitted on the catalogue, randomly projected"
    )
    dim: int = Field(256, ge=1, le=4096, description="embedding size; 64, 128 or 256 for wordllama_l2_supercat")
    batch_size: int = Field(1024, ge=1, description="texts encoded per batch")
    cache_dir: Path | None = Field(
        None, description="per-item vectors cached by sha256 of (encoder, version, text); null = no cache"
    )
    hash_features: int = Field(2**20, ge=16, description="hashed_tfidf: buckets of the hashing vectorizer")
    seed: int = Field(0, ge=0, description="hashed_tfidf: seed of the random projection")

    @model_validator(mode="after")
    def _dim_fits_encoder(self) -> TextFeaturesConfig:
        if self.encoder == WORDLLAMA and self.dim not in WORDLLAMA_DIMS:
            raise ValueError(f"text_features.dim must be one of {list(WORDLLAMA_DIMS)} for {WORDLLAMA} "
                             f"(got {self.dim})")
        return self
