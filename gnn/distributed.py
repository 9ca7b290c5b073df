"""Data- and graph-parallel LightGCN training with ``torch.distributed`` (gloo on CPU, NCCL on GPUs).

W ranks train one model. Rank r owns a contiguous block of the N = U + I graph rows, balanced by non-zeros,
and holds only that block of the normalised adjacency A_hat (rows_r x N, plus its transpose for the backward
pass). One propagation layer is then

    X^(l+1)[rows_r] = A_hat[rows_r, :] X^(l)          (nnz / W work per rank)
    X^(l+1)         = all_gather_r X^(l+1)[rows_r]     (N x d floats gathered per layer)

so the sparse products, the part of a step that grows with the edges, are split W ways. The backward of the
gather all-reduces the (N, d) gradient and keeps the rank's rows. Layer 0 (the N x d embedding table, the
only parameter) is replicated: each rank computes the loss of its share of every global batch, the
gradients are summed with one all-reduce of N x d floats per step, and every rank applies the same Adam
update, so the replicas never drift.

A global batch of B pairs is cut into W contiguous shards; rank r's objective is sum(its shard's terms) / B,
so the summed gradient is exactly the single-process gradient of the batch: W processes follow the same
trajectory as one (up to floating-point summation order), with the same ``batch_size`` and schedule.

Bytes moved per step per rank: 2 L N d 4 (gather forward, all-reduce backward, per layer) + N d 4 (gradient
all-reduce), about 0.5 GB for N = 240k, d = 64, L = 3 — a few ms over NVLink, while the per-rank sparse work
shrinks as 1/W. On one machine's CPU cores the processes share the cores, so W processes are not faster
than one process with W threads (bench/results/training/ has the measurements).

`launch` starts the ranks as local processes (``torch.multiprocessing``) and fails the whole job with one
clear error when any rank dies; rank 0 alone writes checkpoints, so ``--resume`` continues after a failure.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor

from homerank.engine.errors import HomerankError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RowBlock:
    """Rank ``rank``'s rows ``start:stop`` of A_hat, as (stop - start, N) CSR and its (N, stop - start)
    transpose; ``bounds`` holds every rank's (start, stop)."""

    rank: int
    start: int
    stop: int
    bounds: tuple[tuple[int, int], ...]
    rows: Tensor
    rows_t: Tensor

    @property
    def world_size(self) -> int:
        return len(self.bounds)

    @property
    def max_rows(self) -> int:
        return max(stop - start for start, stop in self.bounds)


def row_bounds(crow_indices: Tensor, world_size: int) -> tuple[tuple[int, int], ...]:
    """Cut N rows into ``world_size`` contiguous blocks with about nnz / W non-zeros each (never empty while
    N >= W)."""
    num_rows = crow_indices.numel() - 1
    if world_size > num_rows:
        raise HomerankError(f"train.world_size {world_size} exceeds the graph's {num_rows} nodes")
    # in int64 whatever the index dtype: W * nnz can pass 2^31 for an int32 CSR
    targets = torch.arange(1, world_size, dtype=torch.int64) * int(crow_indices[-1]) // world_size
    cuts = torch.searchsorted(crow_indices, targets.to(crow_indices.dtype)).tolist()
    edges = [0]
    for position, cut in enumerate(cuts, start=1):  # strictly increasing, leaving a row for every later block
        edges.append(min(max(cut, edges[-1] + 1), num_rows - (world_size - position)))
    edges.append(num_rows)
    return tuple(zip(edges[:-1], edges[1:], strict=True))


def row_block(adjacency: Tensor, rank: int, world_size: int) -> RowBlock:
    """Rank ``rank``'s block of the sparse CSR ``adjacency`` (N, N)."""
    crow = adjacency.crow_indices()
    bounds = row_bounds(crow, world_size)
    start, stop = bounds[rank]
    lo, hi = int(crow[start]), int(crow[stop])
    rows = torch.sparse_csr_tensor(crow[start : stop + 1] - lo, adjacency.col_indices()[lo:hi],
                                   adjacency.values()[lo:hi], size=(stop - start, adjacency.shape[1]))
    rows_t = rows.to_sparse_coo().t().coalesce().to_sparse_csr()
    return RowBlock(rank, start, stop, bounds, rows, rows_t)


class _BlockSpmm(torch.autograd.Function):
    """Y = A_r X for the rank's (n_r, N) block A_r; dL/dX = A_r^T G (precomputed transpose)."""

    @staticmethod
    def forward(ctx, block: RowBlock, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.block = block
        return torch.sparse.mm(block.rows, x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor]:  # type: ignore[override]
        return None, torch.sparse.mm(ctx.block.rows_t, grad.contiguous())


class _GatherRows(torch.autograd.Function):
    """(n_r, d) local rows -> (N, d) rows of every rank; backward: all-reduce the (N, d) gradient (every rank's
    loss reaches every row) and keep this rank's rows."""

    @staticmethod
    def forward(ctx, block: RowBlock, local: Tensor) -> Tensor:  # type: ignore[override]
        ctx.block = block
        padded = local.new_zeros((block.max_rows, local.shape[1]))
        padded[: local.shape[0]] = local
        gathered = [torch.empty_like(padded) for _ in block.bounds]
        dist.all_gather(gathered, padded)
        return torch.cat([part[: stop - start] for part, (start, stop) in zip(gathered, block.bounds, strict=True)])

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor]:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return None, grad[ctx.block.start : ctx.block.stop]


def propagate(layer0: Tensor, block: RowBlock, num_layers: int) -> Tensor:
    """LightGCN's E = 1/(L+1) sum_l A_hat^l E^(0), shape (N, d), computed block-wise across the ranks (every
    rank must call it: it holds collectives), by Horner's rule as one process does (`homerank.gnn.model.power_sum`):
    S_0 = E^(0), S_{k+1} = E^(0) + A_hat S_k, E = S_L / (L + 1)."""
    total = layer0
    for _ in range(num_layers):
        total = layer0 + _GatherRows.apply(block, _BlockSpmm.apply(block, total))
    return total / (num_layers + 1)


def all_reduce_gradients(parameters: list[Tensor]) -> int:
    """Sum every parameter's gradient over the ranks, in place; returns the bytes each rank sent."""
    sent = 0
    for parameter in parameters:
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad)
            sent += parameter.grad.numel() * parameter.grad.element_size()
    return sent


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_size() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class ParentSettings:
    """What a spawned rank takes over from the launching process: its warning filters and the files its
    ``homerank`` logger writes to (the run log), so that rank 0's progress lands where the job logs."""

    warning_filters: list[Any]
    log_files: list[str]
    log_level: int

    @classmethod
    def capture(cls) -> ParentSettings:
        logger = logging.getLogger("homerank")
        handlers = [*logging.getLogger().handlers, *logger.handlers]  # the CLI logs at the root, the API here
        files = list(dict.fromkeys(h.baseFilename for h in handlers if isinstance(h, logging.FileHandler)))
        return cls(list(warnings.filters), files, logger.getEffectiveLevel())

    def apply(self, rank: int) -> None:
        warnings.filters[:] = self.warning_filters
        logger = logging.getLogger("homerank")
        logger.setLevel(self.log_level)
        for path in self.log_files if rank == 0 else ():
            handler = logging.FileHandler(path)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            logger.addHandler(handler)


def _rank_main(rank: int, world_size: int, port: int, backend: str, timeout_s: float, threads: int,
               parent: ParentSettings, target: Callable[..., Any], args: tuple[Any, ...]) -> None:
    """Body of a spawned rank: join the process group on localhost, run ``target(*args)``, leave."""
    parent.apply(rank)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    torch.set_num_threads(threads)
    dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s))
    try:
        target(*args)
    finally:
        dist.destroy_process_group()


def launch(world_size: int, target: Callable[..., Any], args: tuple[Any, ...], *, backend: str = "gloo",
           timeout_s: float = 1800.0, threads: int | None = None) -> None:
    """Run ``target(*args)`` on ``world_size`` local processes joined in one process group (localhost only).

    ``target`` must be importable (a module-level function). When any rank raises or is killed, the others are
    terminated and one `HomerankError` names the rank and how it ended."""
    threads = threads or max(1, (os.cpu_count() or 1) // world_size)
    settings = (world_size, _free_port(), backend, timeout_s, threads, ParentSettings.capture(), target, args)
    context = mp.start_processes(_rank_main, args=settings, nprocs=world_size, join=False, start_method="spawn")
    try:
        while not context.join():
            pass
    except mp.ProcessExitedException as exc:
        how = f"signal {exc.signal_name}" if exc.signal_name else f"exit status {exc.exit_code}"
        raise HomerankError(f"distributed training: rank {exc.error_index} ended with {how}; the other ranks were "
                            "stopped. Epoch checkpoints written so far are kept: rerun with --resume to continue"
                            ) from None
    except mp.ProcessRaisedException as exc:
        raise _rank_error(exc) from None


def _rank_error(exc: mp.ProcessRaisedException) -> HomerankError:
    """The error a rank raised, for the launching process: a homerank error keeps its class (and so its exit
    status, e.g. 3 for a diverged training) and message; anything else becomes a `HomerankError` naming it."""
    last = str(exc).strip().splitlines()[-1] if str(exc).strip() else "an error"
    name, _, message = last.partition(": ")
    known = {cls.__name__: cls for cls in (HomerankError, *HomerankError.__subclasses__())}
    cls = known.get(name.rsplit(".", 1)[-1]) if name.startswith("homerank.") else None
    if cls is not None:
        return cls(message)
    return HomerankError(f"distributed training: rank {exc.error_index} failed: {last}")


def scratch_dir(checkpoint_dir: Path | None) -> tempfile.TemporaryDirectory[str] | None:
    """A temporary folder for the ranks' hand-over when the caller keeps no checkpoints."""
    return None if checkpoint_dir is not None else tempfile.TemporaryDirectory(prefix="homerank-ddp-")
