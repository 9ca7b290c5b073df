"""Item text features: each catalogue item's "title. category. description" as a (dim,) float32 unit vector.

Two encoders, always chosen by name (`homerank.gnn.text_config.TextFeaturesConfig.encoder`), never one in
place of the other on its own:

``wordllama_l2_supercat`` (`WordLlamaEncoder`, extra ``homerank[text]``)
    WordLlama's static token embeddings, whose weights (a (32000, 256) float16 table, 16 MB, MIT licence) and
    tokenizer ship inside the ``wordllama`` wheel, so nothing is downloaded at run time. For a text with
    tokens t_1..t_L (Llama-2 SentencePiece vocabulary)

        e = mean_l W[t_l, :dim],    x = e / ||e||_2                      W: (32000, 256), x: (dim,)

    which is what ``wordllama`` itself computes (``WordLlamaInference.embed(norm=True)``, kept as the
    reference in the tests); the table was trained with Matryoshka losses, so its first 64 or 128 columns are
    embeddings too. The mean runs as one ``torch.nn.functional.embedding_bag`` per batch on the device given
    (CPU or CUDA), with no padding.

``hashed_tfidf`` (`HashedTfidfEncoder`, scikit-learn only)
    Token counts c_i(b) of text i in F hashed buckets (``HashingVectorizer``: lower-cased words of letters and
    digits, murmurhash3 to a bucket, no sign flip), then TF-IDF (``TfidfTransformer``) fitted on the catalogue:

        v_i(b) = (1 + ln c_i(b)) * idf(b),   idf(b) = ln((1 + n) / (1 + df(b))) + 1,   v_i <- v_i / ||v_i||_2

    with n texts and df(b) of them containing bucket b; then a seeded Gaussian random projection to dim:

        z_i = R^T v_i,   R_{b,j} ~ N(0, 1/dim) i.i.d.,   x_i = z_i / ||z_i||_2          R: (F, dim)

    By Johnson-Lindenstrauss, E[<R^T u, R^T v>] = <u, v> and the cosine of two projected texts is within
    O(1/sqrt(dim)) of their TF-IDF cosine, so items sharing (rare) words stay close. R is never stored: row b
    is a pure function of (seed, b) (splitmix64 counters through Box-Muller, `gaussian_rows`), computed only
    for the buckets a batch uses, so it does not depend on numpy's generator streams either. The fitted idf
    is saved in the cache folder and reused, as NVTabular keeps its fitted statistics: an unchanged item keeps
    its vector across runs; ``refit=True`` fits it again on the current catalogue (every item is re-encoded).

Cache: with a ``cache_dir``, one ``.npz`` per (encoder, version) holds the vectors by sha256 of (encoder name,
version, text); only texts not found there are encoded (each distinct text once), then the file is rewritten
through a temporary file and a rename. Hits and misses are logged.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import tempfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from homerank.engine.errors import HomerankError
from homerank.engine.schema import ITEM
from homerank.gnn.text_config import ENCODERS, HASHED_TFIDF, WORDLLAMA, WORDLLAMA_DIMS, TextFeaturesConfig

log = logging.getLogger(__name__)

TEXT_COLUMNS = ("title", "category", "description")  # joined in this order, "title. category. description"
TOKEN_PATTERN = r"(?u)\b\w+\b"  # words of one character too: the "2" of a category "Phones 2" tells it apart
CACHE_FORMAT = 1  # bump when the stored layout or the meaning of a key changes


@runtime_checkable
class TextEncoder(Protocol):
    """Turns texts into unit vectors. ``name`` and ``version`` enter the cache key: ``version`` must change
    whenever the same text would get a different vector (package version, weights, dim, fitted statistics)."""

    name: str
    dim: int

    @property
    def version(self) -> str: ...

    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32, each row of unit length (or zero for a text without tokens)."""
        ...


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


# --- WordLlama (static embeddings shipped in the wheel) -----------------------------------------------------

def _missing_package(package: str, error: Exception) -> HomerankError:
    return HomerankError(
        f"text_features.encoder = {WORDLLAMA} needs the Python package '{package}', which does not import "
        f"({error}): install it with pip install 'homerank[text]', or set text_features.encoder: {HASHED_TFIDF} "
        "(hashed TF-IDF, no model)"
    )


def wordllama_files() -> tuple[Path, Path, str]:
    """(weights, tokenizer, package version) of WordLlama's l2_supercat model inside the installed wheel.

    The files are opened straight from the package folder, which is found without importing the package
    (``import wordllama`` calls ``logging.basicConfig`` and would change the job's logging). ``WordLlama.load``
    is not used: it looks for the tokenizer under a folder name the wheel does not have (``tokenizer/``, not
    ``tokenizers/``, wordllama 0.4.0) and would then download it from the hub, which is not allowed here.
    """
    for package in ("tokenizers", "safetensors"):
        try:
            __import__(package)
        except ImportError as error:
            raise _missing_package(package, error) from error
    try:
        spec = importlib.util.find_spec("wordllama")
    except (ImportError, ValueError) as error:
        raise _missing_package("wordllama", error) from error
    if spec is None or not spec.submodule_search_locations:
        raise _missing_package("wordllama", ModuleNotFoundError("No module named 'wordllama'"))
    root = Path(next(iter(spec.submodule_search_locations)))
    weights = root / "weights" / "l2_supercat_256.safetensors"
    tokenizer = root / "tokenizers" / "l2_supercat_tokenizer_config.json"
    for path in (weights, tokenizer):
        if not path.is_file():
            raise HomerankError(
                f"text_features.encoder = {WORDLLAMA}: the installed wordllama package has no {path.name} (looked "
                f"in {path.parent}); install the pinned version with pip install 'homerank[text]', or set "
                f"text_features.encoder: {HASHED_TFIDF}"
            )
    return weights, tokenizer, metadata.version("wordllama")


@functools.lru_cache(maxsize=4)
def _wordllama_table(dim: int, device: str) -> torch.Tensor:
    from safetensors import safe_open

    weights, _, _ = wordllama_files()
    with safe_open(str(weights), framework="np", device="cpu") as tensors:
        table = tensors.get_tensor("embedding.weight")[:, :dim]
    return torch.from_numpy(np.ascontiguousarray(table, dtype=np.float32)).to(device)


class WordLlamaEncoder:
    """WordLlama l2_supercat: mean of the texts' token embeddings (first ``dim`` columns), L2-normalised.

    Args:
        dim: 64, 128 or 256 (prefixes of the 256-d table).
        device: torch device of the lookup and the mean (``cpu``, ``cuda``, ``cuda:1``, ...).
    """

    name = WORDLLAMA

    def __init__(self, dim: int = 256, device: str | torch.device = "cpu") -> None:
        if dim not in WORDLLAMA_DIMS:
            raise HomerankError(f"text_features.dim must be one of {list(WORDLLAMA_DIMS)} for {WORDLLAMA} (got {dim})")
        _, tokenizer_path, self.package_version = wordllama_files()  # first: a missing package says what to do
        from tokenizers import Tokenizer

        self.dim = dim
        self.device = torch.device(device)
        self.table = _wordllama_table(dim, str(self.device))  # (32000, dim) float32 on the device
        self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self.tokenizer.no_padding()  # ragged token lists go to embedding_bag as (ids, offsets)
        self.tokenizer.no_truncation()

    @property
    def version(self) -> str:
        return f"wordllama-{self.package_version}-l2_supercat_256-dim{self.dim}-mean-l2"

    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32 unit rows; a text without tokens gets a zero row."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        ids = np.concatenate([np.asarray(e.ids, dtype=np.int64) for e in encodings])
        np.clip(ids, 0, self.table.shape[0] - 1, out=ids)  # as wordllama does for ids past the table
        offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        with torch.no_grad():
            mean = torch.nn.functional.embedding_bag(  # an empty bag gives a zero row
                torch.from_numpy(ids).to(self.device), self.table, torch.from_numpy(offsets).to(self.device),
                mode="mean",
            )
            unit = torch.nn.functional.normalize(mean, dim=1, eps=1e-12)
        return unit.cpu().numpy().astype(np.float32, copy=False)


# --- hashed TF-IDF + random projection ----------------------------------------------------------------------

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijective uint64 mix, so distinct counters give independent-looking words."""
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def gaussian_rows(buckets: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """Rows ``buckets`` of the projection R: (len(buckets), dim) float64, entries N(0, 1/dim).

    Entry (b, j) comes from two uniforms u1, u2 in (0, 1), the top 53 bits of splitmix64 of the counters
    (seed, b, 2j) and (seed, b, 2j + 1), through Box-Muller: sqrt(-2 ln u1) cos(2 pi u2) / sqrt(dim).
    """
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps on purpose
        key = _splitmix64(np.array([seed], dtype=np.uint64))
        base = _splitmix64(np.asarray(buckets, dtype=np.uint64) ^ key)[:, None] * np.uint64(2 * dim)
        counters = base + np.arange(0, 2 * dim, 2, dtype=np.uint64)[None, :]
        u1 = ((_splitmix64(counters) >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
        u2 = ((_splitmix64(counters + np.uint64(1)) >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2) / np.sqrt(dim)


class HashedTfidfEncoder:
    """Hashed TF-IDF fitted on the catalogue's texts, randomly projected to ``dim`` (module docstring: maths).

    Call `fit` (or `load_idf`) before `encode`. CPU only: the sparse product per batch is cheap next to the
    rest of a job.

    Args:
        dim: output size.
        hash_features: F, buckets of the hashing vectorizer (collisions merge words; 2**20 keeps them rare).
        seed: seed of the projection R.
    """

    name = HASHED_TFIDF

    def __init__(self, dim: int = 256, hash_features: int = 2**20, seed: int = 0) -> None:
        self.dim = dim
        self.hash_features = hash_features
        self.seed = seed
        # imported here: scikit-learn takes about a second to import, and most processes never hash a text
        from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer

        self.vectorizer = HashingVectorizer(
            n_features=hash_features, alternate_sign=False, norm=None, token_pattern=TOKEN_PATTERN,
            dtype=np.float64,
        )
        self.tfidf = TfidfTransformer(norm="l2", use_idf=True, smooth_idf=True, sublinear_tf=True)
        self._idf_digest: str | None = None

    def fit(self, texts: Sequence[str]) -> HashedTfidfEncoder:
        """Fit idf(b) on ``texts`` (the whole catalogue)."""
        self.tfidf.fit(self.vectorizer.transform(list(texts)))
        self._idf_digest = hashlib.sha256(self.tfidf.idf_.tobytes()).hexdigest()[:16]
        return self

    @property
    def fitted(self) -> bool:
        return self._idf_digest is not None

    @property
    def idf(self) -> np.ndarray:
        """(hash_features,) float64 idf(b) of the fitted catalogue."""
        if not self.fitted:
            raise RuntimeError("HashedTfidfEncoder: call fit() or load_idf() first")
        return self.tfidf.idf_

    def save_idf(self, path: Path) -> None:
        _atomic_write(path, lambda handle: np.save(handle, self.idf))

    def load_idf(self, path: Path) -> HashedTfidfEncoder:
        idf = np.load(path, allow_pickle=False)
        if idf.shape != (self.hash_features,):
            raise HomerankError(f"{path}: expected a fitted idf of {self.hash_features} buckets, found shape "
                                f"{idf.shape}; delete the file to fit it again on the catalogue")
        self.tfidf.idf_ = idf  # what fit() sets, with the input width it checks in transform()
        self.tfidf.n_features_in_ = self.hash_features
        self._idf_digest = hashlib.sha256(idf.tobytes()).hexdigest()[:16]
        return self

    @property
    def version(self) -> str:
        if not self.fitted:
            raise RuntimeError("HashedTfidfEncoder: call fit() or load_idf() first")
        return (f"sklearn-{metadata.version('scikit-learn')}-F{self.hash_features}-dim{self.dim}-seed{self.seed}"
                f"-idf{self._idf_digest}")

    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32 unit rows; a text without words gets a zero row."""
        weighted = self.tfidf.transform(self.vectorizer.transform(list(texts))).tocsr()  # (n, F), rows unit
        buckets, columns = np.unique(weighted.indices, return_inverse=True)
        compact = sp.csr_matrix((weighted.data, columns.ravel(), weighted.indptr), shape=(len(texts), buckets.size))
        return _unit_rows(np.asarray(compact @ gaussian_rows(buckets, self.dim, self.seed)))


# --- texts, encoders, cache ---------------------------------------------------------------------------------

def item_text(catalogue: pd.DataFrame) -> list[str]:
    """One text per catalogue row: its title, category and description that are present and not empty,
    stripped of surrounding spaces and a trailing full stop, joined by ". " (e.g. "Eco Kettle. Kitchen")."""
    columns = [column for column in TEXT_COLUMNS if column in catalogue.columns]
    if not columns:
        raise HomerankError(
            f"catalogue: text features need a column {', '.join(TEXT_COLUMNS[:-1])} or {TEXT_COLUMNS[-1]} "
            f"(found: {', '.join(map(str, catalogue.columns))}); add one or disable text_features"
        )
    parts = [
        catalogue[column].astype("string").fillna("").str.strip().str.rstrip(".").str.strip().tolist()
        for column in columns
    ]
    return [". ".join(part for part in row if part) for row in zip(*parts, strict=True)]


def _idf_path(cache_dir: Path, hash_features: int) -> Path:
    return cache_dir / f"{HASHED_TFIDF}-F{hash_features}.idf.npy"


def make_encoder(name: str, *, dim: int = 256, device: str | torch.device = "cpu", texts: Sequence[str] = (),
                 cache_dir: str | Path | None = None, hash_features: int = 2**20, seed: int = 0,
                 refit: bool = False) -> TextEncoder:
    """The encoder called ``name``, ready to encode.

    For ``hashed_tfidf`` the idf is read from ``cache_dir`` when it was fitted there before (unless
    ``refit``), else fitted on ``texts`` and saved there. A ``wordllama_l2_supercat`` that is not installed
    raises `HomerankError` (never falls back to hashed TF-IDF).
    """
    if name == WORDLLAMA:
        return WordLlamaEncoder(dim=dim, device=device)
    if name == HASHED_TFIDF:
        encoder = HashedTfidfEncoder(dim=dim, hash_features=hash_features, seed=seed)
        saved = _idf_path(Path(cache_dir), hash_features) if cache_dir is not None else None
        if saved is not None and saved.is_file() and not refit:
            log.info("text features: idf of %s read from %s", HASHED_TFIDF, saved)
            return encoder.load_idf(saved)
        encoder.fit(texts)
        if saved is not None:
            saved.parent.mkdir(parents=True, exist_ok=True)
            encoder.save_idf(saved)
        return encoder
    raise HomerankError(f"text_features.encoder: unknown encoder '{name}'; choose one of {', '.join(ENCODERS)}")


def _atomic_write(path: Path, write: Any) -> None:
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            write(handle)
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


class VectorCache:
    """Vectors by content key in ``cache_dir/<encoder>-<sha256(version)[:16]>.npz``: ``keys`` (m,) sorted
    hex sha256 as bytes, ``vectors`` (m, dim) float32. Two writers at once cost only recomputation: each file
    written is whole (temporary file + rename), the last one wins."""

    def __init__(self, cache_dir: Path, encoder: TextEncoder) -> None:
        self.prefix = f"{encoder.name}\0{encoder.version}\0{CACHE_FORMAT}\0"
        version = hashlib.sha256(self.prefix.encode()).hexdigest()[:16]
        self.path = cache_dir / f"{encoder.name}-{version}.npz"
        self.dim = encoder.dim
        self.keys = np.zeros(0, dtype="S64")
        self.vectors = np.zeros((0, self.dim), dtype=np.float32)
        if self.path.is_file():
            with np.load(self.path, allow_pickle=False) as stored:
                self.keys, self.vectors = stored["keys"], stored["vectors"]

    def key(self, texts: Sequence[str]) -> np.ndarray:
        """(n,) sha256 of (encoder name, version, text) as 64 hex bytes."""
        return np.array([hashlib.sha256((self.prefix + text).encode()).hexdigest().encode() for text in texts],
                        dtype="S64")

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """(n,) row of each key in ``vectors``, -1 where absent."""
        position = np.searchsorted(self.keys, keys)
        inside = position < self.keys.size
        found = np.zeros(keys.size, dtype=bool)
        found[inside] = self.keys[position[inside]] == keys[inside]
        return np.where(found, position, -1)

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Store new (key, vector) pairs (keys not yet stored) and rewrite the file."""
        keys = np.concatenate([self.keys, keys])
        vectors = np.concatenate([self.vectors, vectors])
        order = np.argsort(keys, kind="stable")
        self.keys, self.vectors = keys[order], vectors[order]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.path, lambda handle: np.savez(handle, keys=self.keys, vectors=self.vectors))


def encode_texts(texts: list[str], encoder: TextEncoder, cache_dir: str | Path | None = None,
                 batch_size: int = 1024) -> tuple[np.ndarray, int, int]:
    """(len(texts), dim) float32 vectors of ``texts``, with the number of cache hits and of texts encoded.

    Each distinct text missing from the cache is encoded once, ``batch_size`` at a time.
    """
    if batch_size < 1:
        raise HomerankError(f"text_features.batch_size must be at least 1 (got {batch_size})")
    cache = VectorCache(Path(cache_dir), encoder) if cache_dir is not None else None
    if cache is not None:
        keys = cache.key(texts)
        rows = cache.lookup(keys)
    else:
        keys = np.array(texts, dtype=object)
        rows = np.full(len(texts), -1)
    missing = rows < 0
    new_keys, first, inverse = np.unique(keys[missing], return_index=True, return_inverse=True)
    missing_texts = [texts[i] for i in np.flatnonzero(missing)[first]]
    encoded = np.zeros((len(missing_texts), encoder.dim), dtype=np.float32)
    for start in range(0, len(missing_texts), batch_size):
        batch = encoder.encode(missing_texts[start:start + batch_size])
        if batch.shape != (len(missing_texts[start:start + batch_size]), encoder.dim):
            raise RuntimeError(f"{encoder.name}.encode returned shape {batch.shape} for "
                               f"{len(missing_texts[start:start + batch_size])} texts of dim {encoder.dim}")
        encoded[start:start + batch.shape[0]] = batch
    result = np.empty((len(texts), encoder.dim), dtype=np.float32)
    if cache is not None:
        result[~missing] = cache.vectors[rows[~missing]]
        if len(missing_texts):
            cache.add(new_keys, encoded)
    result[missing] = encoded[inverse.ravel()]
    return result, int((~missing).sum()), len(missing_texts)


def item_text_features(catalogue: pd.DataFrame, encoder: str | TextEncoder, cache_dir: str | Path | None = None,
                       batch_size: int = 1024, *, dim: int = 256, device: str | torch.device = "cpu",
                       hash_features: int = 2**20, seed: int = 0, refit: bool = False,
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Text features of every catalogue item: (item_ids (n,), vectors (n, dim) float32), in catalogue order.

    ``encoder`` is a name (`make_encoder` builds it, the hashed TF-IDF fitted on this catalogue or read from
    ``cache_dir``) or a ready `TextEncoder`. Cache hits and the number of texts encoded are logged.
    """
    if hasattr(catalogue, "to_pandas"):  # a cuDF frame: the texts are tokenised on the host anyway
        catalogue = catalogue.to_pandas()
    if ITEM not in catalogue.columns:
        raise HomerankError(f"catalogue: text features need the column {ITEM} (found: "
                            f"{', '.join(map(str, catalogue.columns))})")
    duplicated = catalogue[ITEM].duplicated()
    if duplicated.any():
        raise HomerankError(f"catalogue: {int(duplicated.sum())} repeated {ITEM} values (first: "
                            f"{catalogue[ITEM][duplicated].iloc[0]}); text features need one row per item")
    texts = item_text(catalogue)
    if isinstance(encoder, str):
        encoder = make_encoder(encoder, dim=dim, device=device, texts=texts, cache_dir=cache_dir,
                               hash_features=hash_features, seed=seed, refit=refit)
    vectors, hits, encoded = encode_texts(texts, encoder, cache_dir, batch_size)
    empty = sum(1 for text in texts if not text)
    log.info("text features (%s, dim %d): %d items, %d from the cache, %d texts encoded%s", encoder.name,
             encoder.dim, len(texts), hits, encoded, f", {empty} without text (zero rows)" if empty else "")
    return catalogue[ITEM].to_numpy(), vectors


def features_from_config(catalogue: pd.DataFrame, config: TextFeaturesConfig,
                         device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """`item_text_features` with the settings of ``config`` (device: the backend's ``torch_device``)."""
    return item_text_features(catalogue, config.encoder, config.cache_dir, config.batch_size, dim=config.dim,
                              device=device, hash_features=config.hash_features, seed=config.seed)
