"""Typed configuration of training and evaluation."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from homerank.engine.config import StrictModel
from homerank.gnn.text_config import WORDLLAMA, WORDLLAMA_DIMS, TextFeaturesConfig

METRICS = ("recall", "ndcg", "precision", "hitrate")
METRIC_PATTERN = re.compile(rf"({'|'.join(METRICS)})@([1-9][0-9]*)")


class LinearFilterConfig(StrictModel):
    """Optional GF-CF linear filter ensembled with LightGCN (gnn.linear_filter); its share is chosen on
    the validation split from ``shares`` (0 = LightGCN alone, 1 = filter alone)."""

    section: ClassVar[str] = "train.linear_filter"
    renamed_keys: ClassVar[dict[str, str]] = {"weights": "shares", "refit": "refit_with_valid"}

    enabled: bool = False
    singular_vectors: int = Field(256, ge=1, description="k of the ideal low-pass filter")
    alpha: float = Field(0.3, ge=0, description="weight of the low-pass term inside GF-CF")
    sharpening: float = Field(
        0.0, ge=0, description="BSPM sharpening time T: integrate ds/dt = -s R~^T R~ over [0, T] (0 = plain GF-CF)"
    )
    sharpening_solver: Literal["euler", "rk4"] = Field("euler", description="ODE solver of the sharpening process")
    sharpening_steps: int = Field(1, ge=1, description="solver steps over [0, T]")
    svd_solver: Literal["arpack", "randomized"] = Field(
        "arpack", description="top-k SVD: exact ARPACK, or randomized subspace iteration (gnn.svd; ~4x faster on "
        "Gowalla)"
    )
    svd_iterations: int = Field(4, ge=0, description="power iterations of the randomized SVD")
    shares: list[float] = Field(
        default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0], description="candidate shares w of the filter in the "
        "blend (1 - w) z(LightGCN) + w z(GF-CF), chosen on validation"
    )
    popularity_weights: list[float] = Field(
        default_factory=lambda: [0.0], description="weights p of a popularity prior p * z(log(1 + item degree)) "
        "added to the blend; chosen on validation jointly with the share (every share x every p; [0] = none)"
    )
    choice_users: int | None = Field(
        10_000, ge=1, description="validation users (a seeded random sample) scored to choose the share; "
        "null = all of them"
    )
    refit_with_valid: bool = Field(
        True, description="after its share is chosen on validation, refit the filter on train + validation pairs "
        "(it has no trained parameters, so the final scorer uses all known history)"
    )

    @field_validator("shares")
    @classmethod
    def _shares_in_unit_interval(cls, shares: list[float]) -> list[float]:
        # a share w blends (1 - w) LightGCN + w GF-CF: outside [0, 1] one of the two enters with a negative sign
        if not shares or any(not 0.0 <= share <= 1.0 for share in shares):
            raise ValueError(f"expected a non-empty list of numbers in [0, 1] (got {shares})")
        return shares

    @field_validator("popularity_weights")
    @classmethod
    def _some_popularity_weight(cls, weights: list[float]) -> list[float]:
        if not weights:
            raise ValueError("expected at least one weight ([0] = no popularity prior)")
        return weights


CONTENT_FEATURES = ("text", "category", "price")


class ContentConfig(StrictModel):
    """Item content in the model (`homerank.gnn.content`): catalogue features x_i projected into layer 0,

        E^(0)_item_i = m_i e_i + x_i W,     x_i: (F,), W: (F, d) learned, m_i = 1[item i has training pairs]

    so that an item without interactions still gets an embedding (from x_i W alone). Off unless ``features``
    names at least one block; the train stage then reads the run's catalogue (``ingest.catalogue``)."""

    section: ClassVar[str] = "train.content"

    features: list[Literal["text", "category", "price"]] = Field(
        default_factory=list, description="feature blocks of x_i: text (title. category. description embedded "
        "by text_encoder), category (one-hot), price (one-hot price band + standardised log price); [] = off"
    )
    text_encoder: Literal["wordllama_l2_supercat", "hashed_tfidf"] = Field(
        WORDLLAMA, description="the text block's encoder (gnn.text_features): wordllama_l2_supercat (pip install "
        "'homerank[text]') or hashed_tfidf; never replaced by the other on its own"
    )
    text_dim: int = Field(64, ge=1, le=4096, description="size of the text block (64, 128 or 256 for "
                          "wordllama_l2_supercat)")
    text_cache_dir: Path | None = Field(None, description="text vectors cached by content hash; null = no cache")
    price_bands: int = Field(4, ge=1, le=100, description="price quantile bands of the one-hot price block "
                             "(4 = quartiles, as the homepage's price band)")
    id_dropout: float = Field(
        0.0, ge=0.0, lt=1.0, description="share of items whose ID embedding e_i is dropped from layer 0 in each "
        "training step (DropoutNet), so that the projection W learns to score items from content alone"
    )
    write_cold_items: bool = Field(True, description="write train/cold_items.parquet: the content-only embedding "
                                   "of every catalogue item the graph does not have")

    @property
    def enabled(self) -> bool:
        return bool(self.features)

    @field_validator("features", mode="before")
    @classmethod
    def _named_once(cls, features: Any) -> Any:
        if isinstance(features, str):  # `--set train.content.features=text`: one block
            features = [features]
        if isinstance(features, list):
            names = [str(name).strip().lower() for name in features]
            unknown = [name for name in names if name not in CONTENT_FEATURES]
            if unknown:
                raise ValueError(f"unknown feature block {unknown[0]!r}: expected a list of "
                                 f"{', '.join(CONTENT_FEATURES)} ([] = no content features)")
            if len(set(names)) != len(names):
                raise ValueError(f"a feature block is named twice in {names}")
            return [name for name in CONTENT_FEATURES if name in names]  # one canonical order
        return features

    @model_validator(mode="after")
    def _text_settings_fit(self) -> ContentConfig:
        if self.text_encoder == WORDLLAMA and self.text_dim not in WORDLLAMA_DIMS:
            raise ValueError(f"train.content.text_dim must be one of {list(WORDLLAMA_DIMS)} for text_encoder "
                             f"{WORDLLAMA} (got {self.text_dim}), or choose text_encoder: hashed_tfidf")
        return self

    def text_features(self) -> TextFeaturesConfig:
        """The text block's settings as `homerank.gnn.text_features` takes them."""
        return TextFeaturesConfig(enabled="text" in self.features, encoder=self.text_encoder, dim=self.text_dim,
                                  cache_dir=self.text_cache_dir)


LARGE_DATA_STEPS, LARGE_DATA_LR = 4, 0.1  # the default schedule from train.large_data_pairs training pairs on


class TrainConfig(StrictModel):
    section: ClassVar[str] = "train"
    renamed_keys: ClassVar[dict[str, str]] = {"refit": "retrain_with_valid"}
    retired_keys: ClassVar[dict[str, tuple[Any, str]]] = {
        "init": ("normal", "the spectral warm start showed no gain (bench/accuracy.md); layer 0 is N(0, 0.1^2)"),
        "snapshots": (False, "accuracy-vs-time snapshots are taken by the accuracy bench (bench/accuracy_bench.py)"),
    }

    embedding_dim: int = Field(64, ge=1)
    num_layers: int = Field(3, ge=0, description="LightGCN propagation layers")
    epochs: int = Field(40, ge=1, description="maximum epochs (early stopping may end sooner)")
    batch_size: int = Field(16384, ge=1, description="positive (user, item) pairs per step when steps_per_epoch "
                            "is null; giving batch_size without steps_per_epoch turns the default steps off")
    steps_per_epoch: int | None = Field(
        8, ge=1, description="the batch is ceil(training pairs / steps_per_epoch) pairs: an epoch costs that many "
        "full-graph propagations whatever the data size (linear in the edges); null = batch_size pairs per step. "
        "bench/results/training/: 8 steps at lr 0.05 beat 16,384 pairs per step at lr 0.01 per epoch and per second"
    )
    lr: float = Field(0.05, gt=0, description="Adam learning rate (finite, > 0)")
    large_data_pairs: int | None = Field(
        2_000_000, ge=1, description="training pairs from which the default schedule is 4 steps per epoch at lr 0.1 "
        "instead of 8 at lr 0.05 (bench/results/training/: at 4.15M pairs an epoch of 26 s instead of 45 s, and the "
        "8-step schedule's best validation NDCG@20 reached in 425 s instead of 623 s; at 357k pairs the 8-step "
        "schedule ends 3% higher). Applies while steps_per_epoch and lr have their default values (8, 0.05); any "
        "other schedule is kept as given. null: 8 steps at lr 0.05 whatever the size"
    )
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="cosine: lr decays to 0 along a half cosine over `epochs`"
    )
    l2: float = Field(1e-4, ge=0, description="L2 on the batch's layer-0 embeddings (LightGCN paper)")
    loss: Literal["bpr", "softmax"] = Field(
        "bpr", description="bpr: one sampled negative per positive; softmax: sampled softmax over negatives"
    )
    negatives: int = Field(1, ge=1, description="negatives per positive (bpr) or shared per batch (softmax)")
    temperature: float = Field(0.2, gt=0, description="softmax temperature on cosine scores")
    eval_every: int = Field(1, ge=1)
    valid_users: int | None = Field(
        50_000, ge=1, description="validation users scored for early stopping: a seeded random sample (the same "
        "users at every evaluation) when more users have validation items; null = all of them. Full ranking costs "
        "users x items: on a 10M-event log (193k users, 49k items) all users take ~3 min per evaluation on 2 CPU "
        "cores; the test metrics of the evaluate stage always use every user"
    )
    patience: int = Field(5, ge=1, description="evaluations without improvement before stopping")
    early_stopping_metric: str = Field("ndcg@20", description="recall|ndcg|precision|hitrate@K on validation")
    checkpoint_every: int = Field(5, ge=1, description="write checkpoints/epoch_NNNN.pt every N epochs")
    keep_checkpoints: int = Field(3, ge=1, description="keep only the newest N epoch checkpoints")
    time_budget_s: float | None = Field(None, gt=0, description="stop training after this many seconds")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice; with "
                                "world_size > 1, per rank: cores / world_size)")
    world_size: int = Field(1, ge=1, description="ranks of data- and graph-parallel training (gnn.distributed): "
                            "local processes joined by torch.distributed, gloo on CPU, NCCL with one GPU per rank")
    distributed_timeout_s: float = Field(1800.0, gt=0, description="how long a rank waits for the others in one "
                                         "collective before the job fails (rank 0's validation runs meanwhile)")
    linear_filter: LinearFilterConfig = Field(default_factory=LinearFilterConfig)
    content: ContentConfig = Field(default_factory=ContentConfig)
    propagate_known_edges: bool = Field(
        True, description="final embeddings propagate over train + validation edges (all known history); "
        "early stopping and model choices still see only the training graph"
    )
    retrain_with_valid: bool = Field(
        False, description="after early stopping, train a fresh model on train + validation pairs for the best "
        "epoch's count (same schedule and seed); the final embeddings come from it. Choices (epochs, filter share) "
        "are still made on validation with the first model"
    )
    memory_limit_gb: float | None = Field(
        None, gt=0, description="memory the guard may plan with (default: what the device has free)"
    )

    @model_validator(mode="after")
    def _explicit_batch_size_wins(self) -> TrainConfig:
        # a config that names its batch size (and not the steps) means that batch: the default steps give way
        if "batch_size" in self.model_fields_set and "steps_per_epoch" not in self.model_fields_set:
            self.__dict__["steps_per_epoch"] = None
        return self

    def for_pairs(self, num_pairs: int) -> TrainConfig:
        """This config with the default schedule resolved for ``num_pairs`` training pairs (`large_data_pairs`):
        4 steps per epoch at lr 0.1 from that many pairs on, when the schedule is the default one (8 steps at
        lr 0.05, whether written out as in configs/example.yaml or not). Any other schedule (other steps, another
        lr, batch_size without steps) is kept; so is the result, so resolving it again changes nothing."""
        default = (self.steps_per_epoch, self.lr) == (type(self).model_fields["steps_per_epoch"].default,
                                                      type(self).model_fields["lr"].default)
        if not default or self.large_data_pairs is None or num_pairs < self.large_data_pairs:
            return self
        return self.model_copy(update={"steps_per_epoch": LARGE_DATA_STEPS, "lr": LARGE_DATA_LR})

    def fixed_schedule(self, num_pairs: int) -> TrainConfig:
        """`for_pairs`, then fixed: ``large_data_pairs`` null, so a later training of the same stage on more pairs
        (the refit on train + validation) keeps the schedule its epoch count was chosen with."""
        return self.for_pairs(num_pairs).model_copy(update={"large_data_pairs": None})

    def pairs_per_step(self, num_pairs: int) -> int:
        """Positive pairs per optimizer step for ``num_pairs`` training pairs (all ranks together)."""
        if self.steps_per_epoch is None:
            return self.batch_size
        return max(1, -(-num_pairs // self.steps_per_epoch))

    @field_validator("early_stopping_metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        metric = metric.strip().lower()
        if not METRIC_PATTERN.fullmatch(metric):
            raise ValueError(f"{metric!r} is not a validation metric: expected {'|'.join(METRICS)}@K with K a "
                             "positive integer, e.g. ndcg@20")
        return metric


class EvalConfig(StrictModel):
    ks: list[int] = Field(default_factory=lambda: [10, 20, 50])
    batch_size: int = Field(2048, ge=1, description="users scored per block in full ranking")
    test_users: int | None = Field(
        100_000, ge=1, description="test users the evaluate stage ranks: every one while there are at most this "
        "many, else a seeded uniform sample of this many (the same users for the model and the popularity "
        "baseline), whose metrics are estimates given with their standard errors in metrics.json. Exact full "
        "ranking costs users x items, both growing with the log: at 3 * 10^7 events its 578,218 test users took "
        "118 s on 2 CPU cores; null = every test user, whatever the cost"
    )

    @field_validator("ks")
    @classmethod
    def _positive(cls, ks: list[int]) -> list[int]:
        if not ks or any(k < 1 for k in ks):
            raise ValueError("evaluate.ks must be a non-empty list of positive integers")
        return sorted(set(ks))
