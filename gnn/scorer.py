"""The final scorer: how a user's scores over every item are made, as one unit that is saved with the settings
that made it and loaded from them.

For a block of B users with final LightGCN embeddings E_B (B, d), item embeddings E_I (I, d), GF-CF filter scores
F_B (B, I) (`homerank.gnn.linear_filter`) and the items' training degrees deg (I,):

    G_B = E_B E_I^T                                                   (B, I)
    S_B = G_B                                                         when w = 0 and p = 0 (LightGCN alone)
    S_B = (1 - w) z(G_B) + w z(F_B) + p z(log(1 + deg))               otherwise

where z is the per-row z-score (`standardise`), w the filter's share and p the popularity prior's weight, both
chosen on validation by the train stage. With w = 1 and p = 0 the filter scores alone.

Saved as one file (``train/scorer.pt``, ``torch.load(weights_only=True)``-safe): the embeddings, the filter's
state (its R, singular vectors and settings) when it takes part, w, p and a ``settings`` record of how the
scorer was made. `Scorer.load` rebuilds exactly that scorer; nothing else (no file's presence, no config)
decides whether the ensemble runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from homerank.engine.errors import HomerankError, disk_full_error
from homerank.gnn.linear_filter import LinearFilter

ScoreFn = Callable[[Tensor], Tensor]  # user indices (B,) -> scores (B, I)
FORMAT = "homerank.scorer/1"


def save_state(state: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to a temporary sibling, then rename: ``path`` is complete or keeps its earlier content, and
    the temporary file never stays behind. A full disk or quota is a one-line `HomerankError` naming ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as handle:  # through a handle a full disk is an OSError, not a RuntimeError
            torch.save(state, handle)
        tmp.replace(path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        error = disk_full_error(path, exc)
        if error is None:
            raise
        raise error from None


def standardise(scores: Tensor) -> Tensor:
    """Per-row z-score, so two scorers on different scales can be mixed."""
    std, mean = torch.std_mean(scores, dim=1, keepdim=True)
    return (scores - mean).div_(std.clamp_min_(1e-12))


def mix_standardised(first: Tensor, second: Tensor, weight: float, prior: Tensor | None = None,
                     prior_weight: float = 0.0) -> Tensor:
    """(1 - weight) * first + weight * second (+ prior_weight * prior), for row-standardised (B, I) scores
    (see `standardise`) and a (1, I) prior row. Returns a new tensor."""
    mixed = first.mul(1 - weight).add_(second, alpha=weight)
    return mixed.add_(prior, alpha=prior_weight) if prior is not None and prior_weight else mixed


def popularity_prior(item_degree: Tensor) -> Tensor:
    """The popularity prior z(log(1 + d_i)) over items, shape (1, I): the items' log training degrees as one
    z-scored row, on the scale of the standardised scores it is added to."""
    return standardise(torch.log1p(item_degree.float()).view(1, -1))


def embedding_scorer(user_emb: Tensor, item_emb: Tensor) -> ScoreFn:
    """scores = E_users[batch] @ E_items^T, shape (B, I)."""
    return lambda batch: user_emb[batch] @ item_emb.T


def popularity_scorer(item_popularity: Tensor) -> ScoreFn:
    """Every user gets the same scores: the item's training popularity (I,)."""
    return lambda batch: item_popularity.view(1, -1).expand(batch.numel(), -1).clone()


def blend_scorers(first: ScoreFn, second: ScoreFn, weight: float, prior: Tensor | None = None,
                  prior_weight: float = 0.0) -> ScoreFn:
    """score = (1 - weight) z(first) + weight z(second) (+ prior_weight * prior); a pure end (weight 0 or 1
    without a prior) returns that scorer unchanged, on its own scale."""
    if not prior_weight:
        if weight <= 0:
            return first
        if weight >= 1:
            return second
    return lambda batch: mix_standardised(standardise(first(batch)), standardise(second(batch)), weight, prior,
                                          prior_weight)


@dataclass
class Scorer:
    """The final scorer of a trained run (module formula).

    Attributes:
        user_embeddings: (U, d) final LightGCN user embeddings (L2-normalised rows for a cosine-trained model).
        item_embeddings: (I, d) final item embeddings.
        linear_filter: the fitted GF-CF filter, or None when the blend does not use it.
        filter_share: w, the filter's share of the blend.
        popularity_weight: p, the weight of the popularity prior (from the filter's item degrees).
        settings: how the scorer was made (model, loss, what the filter was fitted on, ...), for people.

    Example::

        scorer = Scorer.load("runs/demo/train/scorer.pt")
        top = torch.topk(scorer.scores(torch.tensor([0, 1])), 10).indices   # (2, 10) item indices
    """

    user_embeddings: Tensor
    item_embeddings: Tensor
    linear_filter: LinearFilter | None = None
    filter_share: float = 0.0
    popularity_weight: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.linear_filter is None and (self.filter_share or self.popularity_weight):
            raise ValueError("a filter share or popularity prior needs a fitted linear filter")

    @property
    def num_users(self) -> int:
        return int(self.user_embeddings.shape[0])

    @property
    def num_items(self) -> int:
        return int(self.item_embeddings.shape[0])

    @property
    def kind(self) -> str:
        """``lightgcn``, ``gf-cf`` (the filter alone) or ``lightgcn+gf-cf``."""
        if self.linear_filter is None or (self.filter_share <= 0 and not self.popularity_weight):
            return "lightgcn"
        return "gf-cf" if self.filter_share >= 1 and not self.popularity_weight else "lightgcn+gf-cf"

    def score_fn(self, device: torch.device | str = "cpu") -> ScoreFn:
        """``scores(users (B,)) -> (B, I)`` with every operand moved to ``device`` once."""
        gnn = embedding_scorer(self.user_embeddings.to(device), self.item_embeddings.to(device))
        if self.kind == "lightgcn":
            return gnn
        assert self.linear_filter is not None
        prior = popularity_prior(self.linear_filter.item_degree).to(device)
        return blend_scorers(gnn, self.linear_filter.scorer(device), self.filter_share, prior,
                             self.popularity_weight)

    def scores(self, users: Tensor, device: torch.device | str = "cpu") -> Tensor:
        """Scores of ``users`` (B,) over all items, (B, I)."""
        return self.score_fn(device)(users.to(device))

    def state(self) -> dict[str, Any]:
        return {"format": FORMAT, "user_embeddings": self.user_embeddings.cpu(),
                "item_embeddings": self.item_embeddings.cpu(), "filter_share": float(self.filter_share),
                "popularity_weight": float(self.popularity_weight), "settings": dict(self.settings),
                "linear_filter": None if self.kind == "lightgcn" else self.linear_filter.state()}

    def save(self, path: str | Path) -> None:
        """Write atomically (temp file, then rename; `save_state`)."""
        save_state(self.state(), path)

    @classmethod
    def load(cls, path: str | Path) -> Scorer:
        """The scorer saved by `save`, rebuilt from its own settings."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise HomerankError(f"{path}: not found; run the train stage first") from None
        except Exception as exc:  # noqa: BLE001 - a corrupt or foreign file is the user's to fix
            raise HomerankError(f"{path}: not a readable homerank scorer ({type(exc).__name__}); "
                                "run the train stage again") from None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise HomerankError(f"{path}: not a {FORMAT} file (written by another homerank version?); "
                                "run the train stage again")
        linear = LinearFilter.from_state(state["linear_filter"]) if state["linear_filter"] is not None else None
        return cls(state["user_embeddings"], state["item_embeddings"], linear, float(state["filter_share"]),
                   float(state["popularity_weight"]), dict(state["settings"]))
