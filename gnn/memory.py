"""Resource guard: estimate the memory a training run needs before it starts, and fail early with a
suggestion instead of running out of memory mid-job.

Estimate in bytes (float32 = 4 bytes, N = U + I nodes, d = embedding_dim, nnz = 2E):

    parameters and Adam moments                         3 * N * d * 4   (the best state lives in a file beside the
                                                                        checkpoints; the gradient is a Horner buffer)
    propagation (`homerank.gnn.model.power_sum`)        3 * N * d * 4   (backward: the loss's gradient and two Horner
                                                                        buffers, whatever L; a GPU's figure: the CPU
                                                                        sums the gradient in place in 4 column blocks,
                                                                        1.75 * N * d * 4, `power_sum_in_place`)
    adjacency (CSR, int32 indices)                      nnz * 8 + (N + 1) * 4
    training pairs                                      E * 20          (int32 users and items, int64 keys, int32 order)
    loss                                                softmax: batch_users * negatives * 4 * 3 + batch * d * 4 * 4;
                                                        bpr: min(batch, BPR_CHUNK_PAIRS) * d * 4 * 4 (its pieces)
    full-ranking block                                  users_per_block * I * 4 * 3 (a CPU block is at most 256 MiB)

times a safety factor of 1.5 for allocator slack and temporaries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from homerank.engine.errors import HomerankError
from homerank.gnn.config import EvalConfig, TrainConfig
from homerank.gnn.losses import BPR_CHUNK_PAIRS
from homerank.gnn.metrics import users_per_block

SAFETY = 1.5


@dataclass(frozen=True)
class MemoryEstimate:
    bytes_needed: int
    bytes_available: int
    parts: dict[str, int]

    @property
    def fits(self) -> bool:
        return self.bytes_needed <= self.bytes_available


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def estimate_training_memory(num_users: int, num_items: int, num_edges: int, train: TrainConfig,
                             evaluate: EvalConfig, average_degree: float) -> dict[str, int]:
    nodes, dim = num_users + num_items, train.embedding_dim
    batch = train.pairs_per_step(num_edges)
    if train.loss == "softmax":
        batch_users = min(num_users, max(1, int(batch / max(average_degree, 1.0))))
        loss = batch_users * train.negatives * 4 * 3 + batch * dim * 4 * 4
    else:  # scored in pieces of BPR_CHUNK_PAIRS triples (their summed (N, d) gradient is in the propagation's part)
        loss = min(batch * train.negatives, BPR_CHUNK_PAIRS) * dim * 4 * 4
    return {
        "parameters_and_optimizer": 3 * nodes * dim * 4,
        "propagation": 3 * nodes * dim * 4,
        "adjacency": 2 * num_edges * 8 + (nodes + 1) * 4,
        "training_pairs": num_edges * 20,
        "loss": loss,
        "ranking_block": min(users_per_block(evaluate.batch_size, num_items), num_users) * num_items * 4 * 3,
    }


def check_training_memory(num_users: int, num_items: int, num_edges: int, train: TrainConfig,
                          evaluate: EvalConfig, device: torch.device, limit_bytes: int | None = None
                          ) -> MemoryEstimate:
    """Raise HomerankError with a suggestion when the estimate exceeds what the device has free."""
    parts = estimate_training_memory(num_users, num_items, num_edges, train, evaluate,
                                     num_edges / max(num_users, 1))
    needed = int(sum(parts.values()) * SAFETY)
    available = limit_bytes if limit_bytes is not None else available_bytes(device)
    estimate = MemoryEstimate(needed, available, parts)
    if not estimate.fits:
        biggest = max(parts, key=parts.get)
        hint = {
            "parameters_and_optimizer": "a smaller train.embedding_dim or a stricter k-core "
                                        "(interactions.min_user_interactions / min_item_interactions)",
            "propagation": "fewer train.num_layers or a smaller train.embedding_dim",
            "adjacency": "a stricter k-core (interactions.min_*_interactions)",
            "training_pairs": "a stricter k-core (interactions.min_*_interactions) or a shorter time window",
            "loss": "a smaller train.batch_size or train.negatives",
            "ranking_block": "a smaller evaluate.batch_size",
        }[biggest]
        where = "GPU" if device.type == "cuda" else "RAM"
        raise HomerankError(
            f"train: estimated {needed / 2**30:.1f} GiB needed but {available / 2**30:.1f} GiB {where} free "
            f"(largest part: {biggest}); try {hint}" + ("" if device.type == "cuda" else ", or --device gpu")
        )
    return estimate
