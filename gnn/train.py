"""Training loop: Adam over shuffled positive pairs, one full LightGCN propagation per step, early
stopping on a validation metric (default NDCG@20), checkpoints every N epochs, fixed seed.

Determinism: the same seed, data and thread count give identical losses, metrics and embeddings (torch's
CPU sparse-dense product and Adam are deterministic; the sampler draws from a seeded ``torch.Generator``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from homerank.engine.errors import HomerankError, TrainingDivergedError
from homerank.engine.memory import large_allocations_mapped
from homerank.gnn import distributed
from homerank.gnn.config import EvalConfig, TrainConfig
from homerank.gnn.dot_top_k import embedding_ranker
from homerank.gnn.keys import pair_keys
from homerank.gnn.losses import (
    add_counted_l2_gradient,
    chunked_bpr_loss,
    counted_l2_penalty,
    row_counts,
    sampled_softmax_loss,
)
from homerank.gnn.metrics import CSRIndex, evaluate_ranking
from homerank.gnn.model import LightGCNRecommender, PreviousModel
from homerank.gnn.sampling import sample_negatives
from homerank.gnn.scorer import embedding_scorer, save_state

log = logging.getLogger(__name__)

EvaluationHook = Callable[[int, torch.Tensor, torch.Tensor, float], None]


@dataclass
class TrainData:
    """Encoded training pairs and the graph; indices are contiguous (users 0..U-1, items 0..I-1)."""

    num_users: int
    num_items: int
    train_users: torch.Tensor  # (E,) int32 (int64 accepted): the pairs' user index (None while `train_lightgcn`'s
    train_items: torch.Tensor  # (E,) int32 (int64 accepted): the pairs' item index   steps hold them as keys)
    adjacency: torch.Tensor  # (N, N) sparse CSR, A_hat
    valid: CSRIndex | None = None  # held-out validation items per user
    item_features: torch.Tensor | None = None  # (I, F) float32 content features (train.content), or None
    warm_start: PreviousModel | None = None  # layer 0 starts from an earlier model's rows (warm_start.previous_run)


@dataclass
class TrainResult:
    model: LightGCNRecommender
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_metric: float | None = None
    epochs: int = 0
    train_seconds: float = 0.0
    stopped_because: str = "max_epochs"


def set_seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, epoch: int,
                    extra: dict[str, Any] | None = None) -> None:
    """state_dicts only (loadable with ``torch.load(weights_only=True)``), written atomically (`save_state`)."""
    save_state({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, **(extra or {})},
               path)


def load_state(path: Path) -> dict[str, Any]:
    """A checkpoint, loaded with ``weights_only=True`` (tensors and plain containers only); a file torch cannot
    or will not load is a one-line `HomerankError` naming it."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, corrupt or foreign: the user's to remove
        raise HomerankError(f"{path}: not a readable homerank checkpoint ({type(exc).__name__}); delete it to resume "
                            "from an earlier one, or train from the start without --resume") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise HomerankError(f"{path}: not a homerank checkpoint (no model state); delete it or train from the start "
                            "without --resume")
    return state


FINITE_CHUNK = 1 << 22


def check_finite(where: str, lr: float, **tensors: torch.Tensor) -> None:
    """Raise `TrainingDivergedError` (exit 3) when any of ``tensors`` holds NaN or +-inf; ``where`` says when
    (e.g. "at epoch 3"), the message names the tensor, how many values and one of them."""
    for name, tensor in tensors.items():
        flat = tensor.detach().reshape(-1)
        # checked in pieces of 2^22 values: no (N, d) mask while the tables are all finite, as they are but once
        if all(bool(torch.isfinite(flat[start : start + FINITE_CHUNK]).all())
               for start in range(0, flat.numel(), FINITE_CHUNK)):
            continue
        bad = ~torch.isfinite(tensor.detach())
        if bool(bad.any()):
            example = float(tensor.detach()[bad].flatten()[0])
            what = name.replace("_", " ")
            raise TrainingDivergedError(f"training diverged {where}: {int(bad.sum())} of {tensor.numel()} values of "
                                        f"the {what} are not finite (e.g. {example}); nothing was published, lower "
                                        f"train.lr (now {lr:g}) and train again")


def _restore(checkpoint: Path, state: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             config: TrainConfig) -> None:
    """Load a checkpoint's model and optimizer state; shapes that no longer fit (train.embedding_dim changed, or
    the ETL gave other user/item counts) are a one-line `HomerankError`."""
    current = model.state_dict()
    for name, saved in state["model"].items():
        if name in current and tuple(saved.shape) != tuple(current[name].shape):
            raise HomerankError(
                f"{checkpoint}: its {name} has shape {tuple(saved.shape)}, this model needs "
                f"{tuple(current[name].shape)} (train.embedding_dim {config.embedding_dim}; did it or the data "
                "change since?); it cannot be resumed: train from the start without --resume")
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (KeyError, RuntimeError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise HomerankError(f"{checkpoint}: does not fit this model ({reason}); train from the start without "
                            "--resume") from None


def latest_checkpoint(folder: Path) -> Path | None:
    candidates = sorted(Path(folder).glob("epoch_*.pt"))
    return candidates[-1] if candidates else None


class TrainingPairs:
    """The training pairs the steps draw their batches from. When they are the sampler's sorted keys themselves
    (k = u * I + i, no twins, in key order: the ETL writes the edges in (user, item) order) and training runs on the
    CPU, ``data``'s two pair tensors are dropped while the steps run (`__enter__`; the keys hold the same pairs) and
    each batch is decoded from the keys (u = k // I, i = k % I, in the pairs' own dtype): at 3 * 10^7 events 97 MiB
    less through every step. `__exit__` gives ``data`` its pairs back, decoded, equal to the ones it had."""

    def __init__(self, data: TrainData, keys: torch.Tensor, device: torch.device | str) -> None:
        self.data, self.keys, self.num_items = data, keys, data.num_items
        users, items = data.train_users.to(device), data.train_items.to(device)
        self.dtype, self.count = users.dtype, users.numel()
        self.decoded = (torch.device(device).type == "cpu" and self.count > 0 and keys.numel() == self.count
                        and torch.equal(keys, users.long() * self.num_items + items.long()))
        self.users, self.items = (None, None) if self.decoded else (users, items)

    def __enter__(self) -> TrainingPairs:
        if self.decoded:
            self.data.train_users = self.data.train_items = None  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        if self.decoded:
            self.data.train_users, self.data.train_items = self._decode(self.keys)

    def _decode(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (keys // self.num_items).to(self.dtype), (keys % self.num_items).to(self.dtype)

    def of(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(users, items) of the pairs numbered ``batch``."""
        if self.decoded:
            return self._decode(self.keys[batch])
        assert self.users is not None and self.items is not None
        return self.users[batch], self.items[batch]

    def all_users(self) -> torch.Tensor:
        """(E,) every pair's user."""
        if self.decoded:
            return self._decode(self.keys)[0]
        assert self.users is not None
        return self.users


def _epoch_order(pairs: TrainingPairs, num_users: int, by_user: bool, generator: torch.Generator) -> torch.Tensor:
    """Visiting order of the training pairs for one epoch: a random permutation, or (``by_user``) pairs
    grouped by user with the users in random order, so that a batch holds whole users (sampled softmax
    then scores each user against the shared negatives once)."""
    device = pairs.keys.device
    order = torch.randperm(pairs.count, generator=generator, device=device,
                           dtype=torch.int32 if pairs.count < 2**31 else torch.int64)
    if not by_user:
        return order
    users = pairs.all_users()
    user_rank = torch.randperm(num_users, generator=generator, device=device)
    return order[torch.argsort(user_rank[users[order]], stable=True)]


class BestState:
    """The best validated model state so far. Given a folder, it lives in the file ``best_state.pt`` there, mapped
    back read-only (``torch.load(mmap=True)``): the page cache holds it, not the training process (an (N, d) table,
    177 MiB at 3 * 10^7 events, during every step); without one it is a copy in memory (`_copy_state`).

    A reader of the mapped state (a checkpoint's write) brings its pages into the process: `release` maps the file
    again, so they leave it."""

    FILE = "best_state.pt"

    def __init__(self, folder: Path | None) -> None:
        self.path = None if folder is None else Path(folder) / self.FILE
        self.state: dict[str, torch.Tensor] | None = None

    def keep(self, state: dict[str, torch.Tensor]) -> None:
        """Make ``state`` (a model's state_dict) the best one."""
        if self.path is None:
            self.state = _copy_state(state, self.state)
            return
        self.state = None  # the previous mapping goes before its file is replaced
        save_state(state, self.path)
        self._map()

    def release(self) -> None:
        if self.path is not None and self.state is not None:
            self._map()

    def discard(self) -> None:
        """Forget the state and remove its file (training is over: the model holds it)."""
        self.state = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def _map(self) -> None:
        assert self.path is not None
        self.state = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)


def _copy_state(state: dict[str, torch.Tensor], into: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """A copy of ``state`` (a model's state_dict), written into the tensors of ``into`` when it holds the same
    names and shapes (the previous best state): no second (N, d) table while the new best is copied (177 MiB at
    3 * 10^7 events)."""
    if into is None or into.keys() != state.keys() or any(
            into[name].shape != value.shape or into[name].dtype != value.dtype for name, value in state.items()):
        return {name: value.detach().clone() for name, value in state.items()}
    for name, value in state.items():
        into[name].copy_(value.detach())
    return into


def _shard(length: int, rank: int, world_size: int) -> slice:
    """Rank ``rank``'s contiguous share of a global batch of ``length`` entries."""
    return slice(length * rank // world_size, length * (rank + 1) // world_size)


def new_model(data: TrainData, config: TrainConfig) -> LightGCNRecommender:
    """The untrained model for ``data``: with the content projection when ``config.content`` names features
    (then ``data.item_features`` must hold them; m_i = item i has training pairs)."""
    if config.content.enabled != (data.item_features is not None):
        raise HomerankError(
            "train.content.features is set but the training data has no item features (the train stage builds "
            "them from the run's catalogue)" if config.content.enabled else
            "the training data has item features but train.content.features is empty: set it, or drop them")
    trained = None
    if data.item_features is not None:
        trained = torch.bincount(data.train_items.cpu(), minlength=data.num_items) > 0
    model = LightGCNRecommender(data.num_users, data.num_items, config.embedding_dim, config.num_layers,
                                item_features=data.item_features, trained_items=trained,
                                content_blocks=len(config.content.features))
    if data.warm_start is not None:  # after the random draws: the ids it did not know keep theirs
        model.warm_start(data.warm_start)
    return model


def _propagate(model: LightGCNRecommender, adjacency: torch.Tensor, block: distributed.RowBlock | None,
               layer0: torch.Tensor | None = None, gradient_in_place: bool = False) -> torch.Tensor:
    """Final embeddings (N, d), users then items, from ``layer0`` (default: the model's E^(0)): the whole graph here,
    or this rank's row block with the other ranks' rows gathered (`homerank.gnn.distributed.propagate`).
    ``gradient_in_place``: the loss's gradient buffer is the step's own (`LightGCNRecommender.propagate`)."""
    if block is None:
        return model.propagate(adjacency, layer0, gradient_in_place)
    return distributed.propagate(model.layer0 if layer0 is None else layer0, block, model.lightgcn.num_layers)


@torch.no_grad()
def _scoring_embeddings(model: LightGCNRecommender, adjacency: torch.Tensor, block: distributed.RowBlock | None,
                        cosine: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if block is None:
        return model.embeddings(adjacency, cosine=cosine)
    final = _propagate(model, adjacency, block)
    users, items = final[: model.num_users], final[model.num_users :]
    if cosine:
        users, items = torch.nn.functional.normalize(users, dim=-1), torch.nn.functional.normalize(items, dim=-1)
    return users, items


def train_lightgcn(
    data: TrainData,
    config: TrainConfig,
    eval_config: EvalConfig,
    seed: int,
    device: torch.device,
    checkpoint_dir: Path | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    on_evaluation: EvaluationHook | None = None,
    show_progress: bool = True,
    resume: bool = False,
    stop_epoch: int | None = None,
) -> TrainResult:
    """Train LightGCN; returns the model holding the best validation state (or the last, without valid).

    ``stop_epoch`` ends training after that epoch while the learning-rate schedule still spans
    ``config.epochs``: a refit then follows the first run's trajectory up to its best epoch.

    ``on_evaluation(epoch, user_emb (U, d), item_emb (I, d), elapsed_seconds)`` is called with the scoring
    embeddings at every validation step (the accuracy bench saves them for its accuracy-vs-time curve).

    With ``resume``, training continues from the newest ``checkpoint_dir/epoch_*.pt`` (model, optimizer,
    schedule, sampler RNG, history and best state are all restored), so a killed run finishes with the same
    result as an uninterrupted one.

    With ``config.world_size`` > 1 this process starts that many ranks (`homerank.gnn.distributed`) and
    returns rank 0's result; called inside an initialised process group, it trains as one of its ranks
    (every rank follows the same trajectory, rank 0 alone evaluates, reports and writes checkpoints).
    """
    resolved = config.for_pairs(data.train_users.numel())
    if resolved is not config and not distributed.is_distributed():
        log.info("train: %d training pairs >= train.large_data_pairs (%d): %d steps per epoch at lr %g",
                 data.train_users.numel(), config.large_data_pairs, resolved.steps_per_epoch, resolved.lr)
    config = resolved
    if config.world_size > 1 and not distributed.is_distributed():
        return train_distributed(data, config, eval_config, seed, device, checkpoint_dir, show_progress, resume,
                                 stop_epoch, on_epoch, on_evaluation)
    rank, world_size = distributed.rank_and_size()
    leader = rank == 0
    set_seed(seed)
    checkpoint = latest_checkpoint(checkpoint_dir) if resume and checkpoint_dir is not None else None
    if resume and checkpoint is None and leader:
        log.warning("--resume: no epoch checkpoint in %s, training from the start", checkpoint_dir)
    if checkpoint is None and leader:  # a fresh run: an earlier run's files would be mistaken for ours
        for stale in checkpoint_dir.glob("*.pt") if checkpoint_dir is not None else ():
            stale.unlink()
    if config.threads:
        torch.set_num_threads(config.threads)
    if leader and torch.device(device).type == "cpu":
        log.info("train: %d torch CPU threads (train.threads %s)", torch.get_num_threads(), config.threads)
    model = new_model(data, config)
    model.to(device)
    adjacency = data.adjacency.to(device)
    block = distributed.row_block(adjacency, rank, world_size) if world_size > 1 else None
    sent_bytes = 0
    # fused: one kernel per step with no (N, d) temporaries (the loop form made two, sqrt(v) and its quotient)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=torch.device(device).type in ("cpu", "cuda"))
    batch_size = config.pairs_per_step(data.train_users.numel())
    steps_per_epoch = -(-data.train_users.numel() // batch_size)
    schedule = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps_per_epoch)
                if config.lr_schedule == "cosine" else None)
    generator = torch.Generator(device=device).manual_seed(seed)
    keys = pair_keys(data.train_users.to(device), data.train_items.to(device), data.num_items)
    pairs = TrainingPairs(data, keys, device)
    valid = data.valid.sample_users(config.valid_users, seed) if data.valid is not None else None
    valid_user_count = int((valid.counts() > 0).sum()) if valid is not None else 0
    if valid is not None and valid is not data.valid and leader:
        log.info("early stopping on %d of %d validation users (train.valid_users, seeded sample)",
                 int((valid.counts() > 0).sum()), int((data.valid.counts() > 0).sum()))
    num_pairs = pairs.count
    result = TrainResult(model=model)
    best = BestState(checkpoint_dir)  # rank 0's alone: only it evaluates (the ranks share the folder)
    since_best = 0
    metric_name = config.early_stopping_metric
    ks = sorted({*eval_config.ks, int(metric_name.split("@")[1])})
    started = time.perf_counter()
    first_epoch = 1
    if checkpoint is not None:
        state = load_state(checkpoint)
        if state.get("seed") != seed:
            raise HomerankError(f"{checkpoint}: written with seed {state.get('seed')}, not {seed}; "
                                "resume with the same seed or train from the start")
        _restore(checkpoint, state, model, optimizer, config)
        if schedule is not None and "schedule" in state:
            schedule.load_state_dict(state["schedule"])
        generator.set_state(state["generator"])
        result.history = list(state["history"])
        if leader and state.get("best_state") is not None:
            best.keep(state["best_state"])
        result.best_metric, result.best_epoch = state.get("best_metric"), int(state.get("best_epoch", 0))
        since_best = int(state.get("since_best", 0))
        started -= float(state.get("elapsed", 0.0))
        first_epoch = int(state["epoch"]) + 1
        del state  # its tables (model, moments, best state) are copied where they belong
        log.info("resuming from %s (epoch %d)", checkpoint, first_epoch - 1)
    progress = Progress(TextColumn("[bold]train[/]"), BarColumn(), TextColumn("{task.completed}/{task.total} ep"),
                        TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                        disable=not (show_progress and leader), transient=False)
    last_epoch = config.epochs if stop_epoch is None else min(stop_epoch, config.epochs)
    with progress, pairs:
        task = progress.add_task("train", total=last_epoch, completed=first_epoch - 1, status="")
        for epoch in range(first_epoch, last_epoch + 1):
            epoch_start = time.perf_counter()
            model.train()
            order = _epoch_order(pairs, data.num_users, config.loss == "softmax", generator)
            total_loss, steps = 0.0, 0
            # the steps' transients (1-30 MB: a batch's keys, its negatives' draws, the counts) get a mapping each,
            # unmapped when freed: glibc's heap kept them resident and scattered, +0.2-0.4 GiB over an epoch at
            # 3 * 10^7 events (`homerank.engine.memory.large_allocations_mapped`); heap reuse is back for the evaluation
            with large_allocations_mapped():
                for start in range(0, num_pairs, batch_size):
                    batch = order[start : start + batch_size]
                    users, positives = pairs.of(batch)  # int32 where the ids fit
                    optimizer.zero_grad(set_to_none=True)  # the last step's gradients go before this step's tables
                    layer0 = model.layer0
                    final = _propagate(model, adjacency, block, layer0, gradient_in_place=True)  # (N, d): users, items
                    user_emb, item_emb = final[: data.num_users], final[data.num_users :]
                    one_table = True
                    if model.has_content and config.content.id_dropout > 0:  # the same draws on every rank
                        draws = torch.rand(data.num_items, 1, generator=generator, device=device)
                        cold = draws < config.content.id_dropout
                        item_emb = torch.where(cold, model.cold_table(), item_emb)  # scored as if never seen
                        one_table = False
                    if config.loss == "bpr":
                        reps = config.negatives
                        users_r, positives_r = (users, positives) if reps == 1 else (users.repeat(reps),
                                                                                      positives.repeat(reps))
                        negatives = sample_negatives(users_r, data.num_items, keys, generator)  # the whole batch's
                        share = _shard(users_r.numel(), rank, world_size)  # draws, the same on every rank
                        fraction = (share.stop - share.start) / users_r.numel()
                        users_r, positives_r, negatives = users_r[share], positives_r[share], negatives[share]
                        if one_table:  # items as rows U + i of the one table: no (N, d) gradient buffer per slice
                            loss = chunked_bpr_loss(final, final, users_r, data.num_users + positives_r,
                                                    data.num_users + negatives)
                        else:
                            loss = chunked_bpr_loss(user_emb, item_emb, users_r, positives_r, negatives)
                        counts = row_counts(layer0.shape[0], (users_r, 0), (positives_r, data.num_users),
                                            (negatives, data.num_users))
                        batch_rows = users_r.numel()
                    else:
                        negatives = torch.randint(0, data.num_items, (config.negatives,), generator=generator,
                                                  device=device)
                        share = _shard(users.numel(), rank, world_size)
                        fraction = (share.stop - share.start) / users.numel()
                        users, positives = users[share], positives[share]
                        batch_users, user_of_pair = torch.unique_consecutive(users, return_inverse=True)
                        loss = sampled_softmax_loss(user_emb[batch_users], item_emb[positives], item_emb[negatives],
                                                    config.temperature, user_of_pair)
                        counts = row_counts(layer0.shape[0], (users, 0), (positives, data.num_users))
                        batch_rows = users.numel()
                    # the L2 term's gradient goes straight into a leaf table's gradient after the backward pass (no
                    # (N, d) temporaries); a content model's layer 0 is computed, so autograd takes it there
                    leaf_l2 = layer0.is_leaf
                    objective = loss if leaf_l2 else loss + config.l2 * counted_l2_penalty(layer0, counts, batch_rows)
                    objective = objective * fraction  # sums to the batch's mean over the ranks
                    del final, user_emb, item_emb  # the graph keeps what its backward needs: the tables go first
                    objective.backward()
                    if leaf_l2 and config.l2:
                        if layer0.grad is None:
                            layer0.grad = torch.zeros_like(layer0)
                        add_counted_l2_gradient(layer0.grad, layer0, counts, config.l2 * fraction / batch_rows)
                    del layer0, counts
                    step_loss_tensor = loss.detach() * fraction
                    if block is not None:
                        sent_bytes += distributed.all_reduce_gradients(list(model.parameters()))
                        torch.distributed.all_reduce(step_loss_tensor)
                    optimizer.step()
                    if schedule is not None:
                        schedule.step()
                    step_loss = float(step_loss_tensor)
                    if not math.isfinite(step_loss):  # stop at once: every later step would only spread the NaN
                        raise TrainingDivergedError(
                            f"training diverged at epoch {epoch} (step {steps + 1}): the {config.loss} loss is "
                            f"{step_loss}; nothing was published, lower train.lr (now {config.lr:g}) and train again")
                    total_loss += step_loss
                    steps += 1
            optimizer.zero_grad(set_to_none=True)  # the last step's gradients are not kept through the evaluation
            # a step can overflow the parameters while its loss was still finite: check before evaluation and checkpoint
            check_finite(f"at epoch {epoch}", config.lr, embeddings=model.layer0)
            record: dict[str, Any] = {"epoch": epoch, "loss": total_loss / max(steps, 1),
                                      "seconds": round(time.perf_counter() - epoch_start, 3)}
            stop = False
            evaluating = data.valid is not None and (epoch % config.eval_every == 0 or epoch == config.epochs)
            if evaluating:  # every rank takes part in the propagation, rank 0 scores
                user_emb, item_emb = _scoring_embeddings(model, adjacency, block, config.loss == "softmax")
            if evaluating and leader:
                check_finite(f"at epoch {epoch}", config.lr, user_embeddings=user_emb, item_embeddings=item_emb)
                # on the CPU through faiss's exact search over this epoch's item embeddings (no (B, I) blocks)
                # the training items to mask, from the sampler's keys for the evaluation only (not held by the steps)
                train_index = CSRIndex.from_keys(keys.cpu(), data.num_users, data.num_items)
                valid_metrics = evaluate_ranking(embedding_scorer(user_emb, item_emb), valid, train_index, ks,
                                                 eval_config.batch_size, device, embedding_ranker(user_emb, item_emb))
                del train_index
                record["valid"] = valid_metrics
                record["valid_users"] = valid_user_count
                if on_evaluation is not None:
                    on_evaluation(epoch, user_emb, item_emb, time.perf_counter() - started)
                value = valid_metrics[metric_name]
                if result.best_metric is None or value > result.best_metric:
                    result.best_metric, result.best_epoch, since_best = value, epoch, 0
                    best.keep(model.state_dict())
                else:
                    since_best += 1
                    if since_best >= config.patience:
                        stop, result.stopped_because = True, f"no {metric_name} gain in {since_best} evaluations"
            if evaluating:
                del user_emb, item_emb  # not kept into the next epoch's first step (an (N, d) table)
            elapsed = time.perf_counter() - started
            record["elapsed"] = round(elapsed, 3)
            if block is not None:
                record["world_size"] = world_size
                record["all_reduce_bytes_per_step"] = sent_bytes // max(steps, 1)
                sent_bytes = 0
            result.history.append(record)
            result.epochs = epoch
            if on_epoch is not None and leader:
                on_epoch(record)
            valid_text = f" valid {metric_name} {record['valid'][metric_name]:.4f}" if "valid" in record else ""
            if leader:
                log.info("epoch %d loss %.4f%s (%.1fs)", epoch, record["loss"], valid_text, record["seconds"])
            progress.update(task, advance=1, status=f"loss {record['loss']:.4f}{valid_text}")
            if checkpoint_dir is not None and epoch % config.checkpoint_every == 0 and leader:
                save_checkpoint(checkpoint_dir / f"epoch_{epoch:04d}.pt", model, optimizer, epoch, {
                    "seed": seed, "generator": generator.get_state(), "history": result.history,
                    "best_state": best.state, "best_metric": result.best_metric, "best_epoch": result.best_epoch,
                    "since_best": since_best, "elapsed": time.perf_counter() - started,
                    **({"schedule": schedule.state_dict()} if schedule is not None else {}),
                })
                for old in sorted(checkpoint_dir.glob("epoch_*.pt"))[: -config.keep_checkpoints]:
                    old.unlink()
                best.release()  # the write read the mapped best state into this process
            if config.time_budget_s is not None and elapsed >= config.time_budget_s and not stop:
                stop, result.stopped_because = True, f"time budget {config.time_budget_s:.0f}s reached"
            if block is not None:  # rank 0 decides (validation, clock) for every rank
                flag = torch.tensor([float(stop)], device=device)
                torch.distributed.broadcast(flag, 0)
                stop = bool(flag.item())
            if stop:
                break
    result.train_seconds = time.perf_counter() - started
    model.zero_grad(set_to_none=True)  # the last step's gradients ((N, d) per table) are not the model's to keep
    if best.state is not None:
        model.load_state_dict(best.state)
        best.discard()
    else:
        result.best_epoch = result.epochs
    check_finite(f"by the end (epoch {result.best_epoch} kept)", config.lr, embeddings=model.layer0)
    if checkpoint_dir is not None and leader:
        save_checkpoint(checkpoint_dir / "best.pt", model, optimizer, result.best_epoch, {"seed": seed})
    if leader:
        log.info("training done: %d epochs, best epoch %d, %s, %.1fs", result.epochs, result.best_epoch,
                 result.stopped_because, result.train_seconds)
    return result


def _train_rank(handover: str, data_parts: dict[str, Any], config: TrainConfig, eval_config: EvalConfig, seed: int,
                device_type: str, checkpoint_dir: str | None, resume: bool, stop_epoch: int | None,
                show_progress: bool) -> None:
    """One spawned rank (`train_distributed`): rebuild the data, train, and (rank 0) hand the result over in a
    file (state_dicts and plain values only)."""
    rank = torch.distributed.get_rank()
    device = torch.device(device_type, rank) if device_type == "cuda" else torch.device(device_type)
    crow, col, values, size = data_parts.pop("adjacency")
    data = TrainData(adjacency=torch.sparse_csr_tensor(crow, col, values, size=size), **data_parts)
    result = train_lightgcn(data, config, eval_config, seed, device,
                            checkpoint_dir=None if checkpoint_dir is None else Path(checkpoint_dir),
                            show_progress=show_progress, resume=resume, stop_epoch=stop_epoch)
    if rank == 0:
        save_state({"model": result.model.state_dict(), "history": result.history, "best_epoch": result.best_epoch,
                    "best_metric": result.best_metric, "epochs": result.epochs,
                    "train_seconds": result.train_seconds, "stopped_because": result.stopped_because},
                   Path(handover))


def train_distributed(data: TrainData, config: TrainConfig, eval_config: EvalConfig, seed: int,
                      device: torch.device, checkpoint_dir: Path | None, show_progress: bool, resume: bool,
                      stop_epoch: int | None, on_epoch: Callable[[dict[str, Any]], None] | None = None,
                      on_evaluation: EvaluationHook | None = None) -> TrainResult:
    """`train_lightgcn` on ``config.world_size`` local ranks (gloo on CPU, NCCL on CUDA, one GPU per rank).

    The hooks cannot cross process boundaries: ``on_epoch`` is replayed from rank 0's history afterwards and
    ``on_evaluation`` is not supported (a `HomerankError`)."""
    if on_evaluation is not None:
        raise HomerankError("train.world_size > 1 does not support evaluation hooks (the accuracy bench's "
                            "snapshots): train with world_size 1")
    if device.type == "cuda" and torch.cuda.device_count() < config.world_size:
        raise HomerankError(f"train.world_size {config.world_size} needs as many GPUs; "
                            f"{torch.cuda.device_count()} visible")
    backend = "nccl" if device.type == "cuda" else "gloo"
    adjacency = data.adjacency.to("cpu")
    parts = {"num_users": data.num_users, "num_items": data.num_items, "train_users": data.train_users,
             "train_items": data.train_items, "valid": data.valid, "item_features": data.item_features,
             "warm_start": data.warm_start,
             "adjacency": (adjacency.crow_indices(), adjacency.col_indices(), adjacency.values(),
                           tuple(adjacency.shape))}
    scratch = distributed.scratch_dir(checkpoint_dir)
    folder = Path(scratch.name) if scratch is not None else Path(checkpoint_dir)  # type: ignore[arg-type]
    handover = folder / "distributed_result.pt"
    handover.unlink(missing_ok=True)
    log.info("training on %d ranks (%s, %s)", config.world_size, backend, device.type)
    try:
        distributed.launch(config.world_size, _train_rank,
                           (str(handover), parts, config, eval_config, seed, device.type,
                            None if checkpoint_dir is None else str(checkpoint_dir), resume, stop_epoch,
                            show_progress),
                           backend=backend, timeout_s=config.distributed_timeout_s, threads=config.threads)
        state = torch.load(handover, map_location="cpu", weights_only=True)
    finally:
        handover.unlink(missing_ok=True)
        if scratch is not None:
            scratch.cleanup()
    model = new_model(data, config)
    model.load_state_dict(state["model"])
    result = TrainResult(model=model.to(device), history=list(state["history"]), best_epoch=int(state["best_epoch"]),
                         best_metric=state["best_metric"], epochs=int(state["epochs"]),
                         train_seconds=float(state["train_seconds"]), stopped_because=str(state["stopped_because"]))
    for record in result.history if on_epoch is not None else ():
        on_epoch(record)
    return result

