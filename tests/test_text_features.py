"""Item text features: texts, hashed TF-IDF, the per-item cache, the explicit encoder choice, WordLlama."""

from __future__ import annotations

import importlib.util
import logging
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError

from homerank.engine.errors import HomerankError
from homerank.engine.synthetic import SyntheticSpec, make_catalogue
from homerank.gnn.text_config import HASHED_TFIDF, WORDLLAMA, TextFeaturesConfig
from homerank.gnn.text_features import (
    HashedTfidfEncoder,
    TextEncoder,
    encode_texts,
    features_from_config,
    gaussian_rows,
    item_text,
    item_text_features,
    make_encoder,
)

HAS_WORDLLAMA = importlib.util.find_spec("wordllama") is not None and importlib.util.find_spec("tokenizers") is not None
needs_wordllama = pytest.mark.skipif(not HAS_WORDLLAMA, reason="wordllama not installed (pip install 'homerank[text]')")


def catalogue(titles: list[str], categories: list[str] | None = None) -> pd.DataFrame:
    frame = pd.DataFrame({"item_id": np.arange(len(titles), dtype=np.int64) + 100, "title": titles})
    if categories is not None:
        frame["category"] = categories
    return frame


class CountingEncoder:
    """Wraps an encoder and records every text it was asked to encode."""

    def __init__(self, inner: TextEncoder) -> None:
        self.inner, self.name, self.dim = inner, inner.name, inner.dim
        self.seen: list[str] = []

    @property
    def version(self) -> str:
        return self.inner.version

    def encode(self, texts: list[str]) -> np.ndarray:
        self.seen.extend(texts)
        return self.inner.encode(texts)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# --- texts --------------------------------------------------------------------------------------------------

def test_item_text_joins_the_columns_present_and_skips_empty_parts():
    frame = pd.DataFrame({
        "item_id": [1, 2, 3, 4],
        "title": ["Eco Kettle.", None, "  Bold Lamp ", ""],
        "category": ["Kitchen", "Garden", None, ""],
        "description": ["Boils fast.", None, "Warm light", None],
    })
    assert item_text(frame) == ["Eco Kettle. Kitchen. Boils fast", "Garden", "Bold Lamp. Warm light", ""]


def test_item_text_without_any_text_column_names_the_columns():
    with pytest.raises(HomerankError, match="title, category or description"):
        item_text(pd.DataFrame({"item_id": [1], "price": [2.0]}))


def test_repeated_item_ids_are_an_error():
    frame = pd.DataFrame({"item_id": [5, 5], "title": ["a", "b"]})
    with pytest.raises(HomerankError, match="repeated item_id"):
        item_text_features(frame, HASHED_TFIDF)


# --- hashed TF-IDF ------------------------------------------------------------------------------------------

def test_gaussian_rows_are_a_function_of_seed_and_bucket():
    rows = gaussian_rows(np.array([3, 17, 2**40]), 8, seed=1)
    assert np.array_equal(gaussian_rows(np.array([17]), 8, seed=1)[0], rows[1])  # not of the other buckets
    assert not np.allclose(gaussian_rows(np.array([17]), 8, seed=2)[0], rows[1])
    many = gaussian_rows(np.arange(4000), 64, seed=0)  # 256k draws of N(0, 1/64)
    assert abs(many.mean()) < 0.005
    assert many.var() * 64 == pytest.approx(1.0, abs=0.02)
    assert abs(np.mean((many * 8) ** 4) - 3.0) < 0.1  # Gaussian kurtosis, not a uniform's 1.8


def test_hashed_tfidf_is_deterministic_and_unit_length():
    texts = ["Eco Kettle. Kitchen", "Smart Kettle. Kitchen", "Bold Sneaker. Shoes", ""]
    first = HashedTfidfEncoder(dim=32, hash_features=2**12, seed=5).fit(texts).encode(texts)
    second = HashedTfidfEncoder(dim=32, hash_features=2**12, seed=5).fit(list(texts)).encode(texts)
    assert first.dtype == np.float32 and first.shape == (4, 32)
    assert np.array_equal(first, second)
    np.testing.assert_allclose(np.linalg.norm(first[:3], axis=1), 1.0, rtol=1e-5)
    assert not first[3].any()  # no words: a zero row
    other_seed = HashedTfidfEncoder(dim=32, hash_features=2**12, seed=6).fit(texts).encode(texts)
    assert not np.allclose(first, other_seed)


def test_hashed_tfidf_projection_keeps_the_tfidf_cosine():
    # JL: with dim = 2048 the projected cosine is within a few 1/sqrt(dim) of the exact TF-IDF cosine
    texts = ["red wool scarf", "red cotton scarf", "blue wool hat", "garden hose reel", "red garden hose"]
    encoder = HashedTfidfEncoder(dim=2048, hash_features=2**16, seed=0).fit(texts)
    exact = encoder.tfidf.transform(encoder.vectorizer.transform(texts)).toarray()
    projected = encoder.encode(texts)
    np.testing.assert_allclose(projected @ projected.T, exact @ exact.T, atol=0.1)


def test_items_sharing_title_words_are_closer():
    texts = ["Eco Kettle. Kitchen", "Smart Kettle. Kitchen", "Bold Sneaker. Shoes", "Pro Sneaker. Shoes"]
    vectors = HashedTfidfEncoder(dim=256).fit(texts).encode(texts)
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.3
    assert cosine(vectors[2], vectors[3]) > cosine(vectors[1], vectors[3]) + 0.3


def test_synthetic_titles_carry_the_category():
    # the generator's titles name the item's category ("Eco Kitchen-17"): with the category column dropped,
    # items of one category are still closer in text space than items of two categories
    items, _ = make_catalogue(SyntheticSpec(items=600, categories=12, seed=3))
    _, vectors = item_text_features(items.drop(columns="category"), HASHED_TFIDF, dim=128)
    category = items["category"].to_numpy(dtype=object)
    same = category[:, None] == category[None, :]
    np.fill_diagonal(same, False)
    different = category[:, None] != category[None, :]
    similarity = vectors @ vectors.T
    assert similarity[same].mean() > similarity[different].mean() + 0.1  # 0.19 vs 0.02 (seed 3)


def test_synthetic_titles_carry_the_segment():
    # the other half of a shopper's taste: titles hold the style word of the item's segment (80% of items), so
    # items of one segment are closer in text space than items of two segments, within and across categories
    items, _ = make_catalogue(SyntheticSpec(items=600, categories=12, seed=3))
    _, vectors = item_text_features(items, HASHED_TFIDF, dim=128)
    category, segment = items["category"].to_numpy(dtype=object), items["segment"].to_numpy()
    same_category = category[:, None] == category[None, :]
    same_segment = segment[:, None] == segment[None, :]
    np.fill_diagonal(same_segment, False)
    similarity = vectors @ vectors.T
    assert similarity[same_category & same_segment].mean() > similarity[same_category & ~same_segment].mean()
    # across categories only the style word is shared: 0.055 vs 0.019 (seed 3)
    assert similarity[~same_category & same_segment].mean() > 2 * similarity[~same_category & ~same_segment].mean()


# --- cache --------------------------------------------------------------------------------------------------

def test_cache_encodes_only_missing_texts(tmp_path):
    titles = ["Eco Kettle", "Smart Kettle", "Bold Sneaker", "Pro Sneaker", "Eco Kettle"]  # one text twice
    frame = catalogue(titles, ["Kitchen", "Kitchen", "Shoes", "Shoes", "Kitchen"])
    counting = CountingEncoder(HashedTfidfEncoder(dim=16, hash_features=2**10).fit(item_text(frame)))

    ids, first = item_text_features(frame, counting, tmp_path, batch_size=2)
    assert np.array_equal(ids, frame["item_id"].to_numpy())
    assert sorted(counting.seen) == sorted(set(item_text(frame)))  # each distinct text once
    np.testing.assert_array_equal(first[0], first[4])

    counting.seen.clear()
    _, again = item_text_features(frame, counting, tmp_path, batch_size=2)
    assert counting.seen == []
    np.testing.assert_array_equal(again, first)

    changed = frame.copy()
    changed.loc[2, "title"] = "Bold Boot"
    _, after = item_text_features(changed, counting, tmp_path, batch_size=2)
    assert counting.seen == ["Bold Boot. Shoes"]
    np.testing.assert_array_equal(np.delete(after, 2, axis=0), np.delete(first, 2, axis=0))
    assert not np.allclose(after[2], first[2])
    assert [path.suffix for path in tmp_path.iterdir()] == [".npz"]  # no temporary file left behind


def test_cache_is_keyed_by_encoder_version(tmp_path):
    texts = ["Eco Kettle", "Bold Sneaker"]
    small = CountingEncoder(HashedTfidfEncoder(dim=8, hash_features=2**10).fit(texts))
    large = CountingEncoder(HashedTfidfEncoder(dim=16, hash_features=2**10).fit(texts))
    encode_texts(texts, small, tmp_path)
    vectors, hits, encoded = encode_texts(texts, large, tmp_path)
    assert (hits, encoded, vectors.shape) == (0, 2, (2, 16))
    assert encode_texts(texts, small, tmp_path)[1:] == (2, 0)


def test_named_hashed_tfidf_reuses_its_fitted_idf(tmp_path, caplog):
    frame = catalogue(["Eco Kettle", "Smart Kettle", "Bold Sneaker"], ["Kitchen", "Kitchen", "Shoes"])
    caplog.set_level(logging.INFO, logger="homerank.gnn.text_features")
    _, first = item_text_features(frame, HASHED_TFIDF, tmp_path, dim=16)
    assert "3 items, 0 from the cache, 3 texts encoded" in caplog.text

    caplog.clear()
    changed = frame.copy()
    changed.loc[0, "title"] = "Eco Teapot"
    _, after = item_text_features(changed, HASHED_TFIDF, tmp_path, dim=16)
    assert "idf of hashed_tfidf read from" in caplog.text
    assert "3 items, 2 from the cache, 1 texts encoded" in caplog.text  # the saved idf: only the new title
    np.testing.assert_array_equal(after[1:], first[1:])

    caplog.clear()
    item_text_features(changed, HASHED_TFIDF, tmp_path, dim=16, refit=True)
    assert "3 items, 0 from the cache, 3 texts encoded" in caplog.text  # a new idf is a new version


def test_saved_idf_gives_the_same_vectors(tmp_path):
    texts = ["Eco Kettle. Kitchen", "Bold Sneaker. Shoes", "Eco Sneaker. Shoes"]
    fitted = HashedTfidfEncoder(dim=16, hash_features=2**10).fit(texts)
    fitted.save_idf(tmp_path / "idf.npy")
    loaded = HashedTfidfEncoder(dim=16, hash_features=2**10).load_idf(tmp_path / "idf.npy")
    assert loaded.version == fitted.version
    np.testing.assert_array_equal(loaded.encode(texts), fitted.encode(texts))
    with pytest.raises(HomerankError, match="idf.npy: expected a fitted idf of 2048 buckets"):
        HashedTfidfEncoder(dim=16, hash_features=2**11).load_idf(tmp_path / "idf.npy")


# --- the encoder is always chosen explicitly ----------------------------------------------------------------

@pytest.mark.parametrize("package", ["wordllama", "tokenizers"])
def test_missing_language_model_is_an_error_not_a_fallback(monkeypatch, package):
    monkeypatch.setitem(sys.modules, package, None)  # makes `import package` fail, as if not installed
    with pytest.raises(HomerankError) as raised:
        make_encoder(WORDLLAMA, dim=64)
    message = str(raised.value)
    assert f"'{package}'" in message
    assert "pip install 'homerank[text]'" in message
    assert "text_features.encoder: hashed_tfidf" in message


def test_unknown_encoder_names_the_choices():
    with pytest.raises(HomerankError, match="unknown encoder 'bert'.*wordllama_l2_supercat, hashed_tfidf"):
        make_encoder("bert")


def test_config_names_the_encoder_and_checks_its_dim():
    assert TextFeaturesConfig().encoder == WORDLLAMA  # the model by default; the fallback only when asked for
    assert TextFeaturesConfig(encoder=HASHED_TFIDF, dim=100).dim == 100
    with pytest.raises(ValidationError, match="64, 128, 256"):
        TextFeaturesConfig(encoder=WORDLLAMA, dim=100)
    with pytest.raises(ValidationError):
        TextFeaturesConfig(encoder="tfidf")
    with pytest.raises(ValidationError):
        TextFeaturesConfig(fallback=HASHED_TFIDF)


def test_features_from_config(tmp_path):
    frame = catalogue(["Eco Kettle", "Bold Sneaker"], ["Kitchen", "Shoes"])
    config = TextFeaturesConfig(encoder=HASHED_TFIDF, dim=24, batch_size=1, cache_dir=tmp_path)
    ids, vectors = features_from_config(frame, config)
    assert ids.tolist() == [100, 101] and vectors.shape == (2, 24)
    assert any(path.name.endswith(".idf.npy") for path in tmp_path.iterdir())


# --- WordLlama (the package model; skipped when the `text` extra is not installed) --------------------------

SENTENCES = ["red running shoes for women", "women's red jogging sneakers", "stainless steel saucepan with lid",
             "cast iron frying pan"]


@needs_wordllama
@pytest.mark.parametrize("dim", [64, 256])
def test_wordllama_shapes_and_similar_sentences_are_closer(dim):
    vectors = make_encoder(WORDLLAMA, dim=dim).encode(SENTENCES + [""])
    assert vectors.shape == (5, dim) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors[:4], axis=1), 1.0, rtol=1e-5)
    assert not vectors[4].any()  # no tokens: a zero row
    shoes, sneakers, saucepan, pan = vectors[:4]
    assert cosine(shoes, sneakers) > cosine(shoes, saucepan) + 0.2
    assert cosine(saucepan, pan) > cosine(sneakers, pan) + 0.2


@needs_wordllama
def test_wordllama_matches_the_package_reference(tmp_path):
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    from homerank.gnn.text_features import wordllama_files

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        from wordllama.inference import WordLlamaInference  # its import calls logging.basicConfig
    finally:
        root.handlers[:], root.level = handlers, level
    weights, tokenizer, _ = wordllama_files()
    table = load_file(str(weights))["embedding.weight"]
    for dim in (128, 256):
        reference = WordLlamaInference(table[:, :dim], Tokenizer.from_file(str(tokenizer)))
        expected = reference.embed(SENTENCES, norm=True, batch_size=3)
        ours, _, _ = encode_texts(SENTENCES, make_encoder(WORDLLAMA, dim=dim), tmp_path, batch_size=3)
        np.testing.assert_allclose(ours, expected, atol=1e-5)


@needs_wordllama
def test_wordllama_through_the_catalogue_with_the_cache(tmp_path):
    items, _ = make_catalogue(SyntheticSpec(items=300, categories=6, seed=1))
    ids, vectors = item_text_features(items, WORDLLAMA, tmp_path, batch_size=64, dim=128)
    assert vectors.shape == (300, 128) and np.array_equal(ids, items["item_id"].to_numpy())
    counting = CountingEncoder(make_encoder(WORDLLAMA, dim=128))
    _, again = item_text_features(items, counting, tmp_path)
    assert counting.seen == []
    np.testing.assert_array_equal(again, vectors)


@needs_wordllama
@pytest.mark.gpu
def test_wordllama_cuda_matches_cpu():
    cpu = make_encoder(WORDLLAMA, dim=256, device="cpu").encode(SENTENCES)
    cuda = make_encoder(WORDLLAMA, dim=256, device="cuda").encode(SENTENCES)
    np.testing.assert_allclose(cuda, cpu, atol=1e-5)
    assert torch.cuda.is_available()
