"""Data- and graph-parallel training (homerank.gnn.distributed): the row blocks, 2 gloo ranks against one process,
and a rank killed in the middle of training."""

from __future__ import annotations

import signal
import threading
import time

import numpy as np
import psutil
import pytest
import torch

from homerank.engine.backend import CPU
from homerank.engine.errors import HomerankError
from homerank.engine.graph import build_graph
from homerank.gnn.config import EvalConfig, TrainConfig
from homerank.gnn.distributed import row_block, row_bounds
from homerank.gnn.metrics import CSRIndex
from homerank.gnn.train import TrainData, train_lightgcn


def _tiny_data(seed: int = 0) -> TrainData:
    """300 users x 120 items with block structure (a user's items cluster around 7u mod 120), 20% held out."""
    rng = np.random.default_rng(seed)
    num_users, num_items = 300, 120
    users = rng.integers(0, num_users, 4000)
    items = (users * 7 + rng.integers(0, 15, users.size)) % num_items
    pairs = np.unique(np.stack([users, items], 1), axis=0)
    held_out = rng.random(len(pairs)) < 0.2
    train = pairs[~held_out]
    graph, _ = build_graph(train[:, 0], train[:, 1], np.ones(len(train)), num_users, num_items, "binary", CPU)
    return TrainData(num_users, num_items, torch.from_numpy(train[:, 0]), torch.from_numpy(train[:, 1]),
                     graph.adjacency(), CSRIndex.from_pairs(pairs[held_out, 0], pairs[held_out, 1], num_users,
                                                            num_items))


def test_row_bounds_balance_non_zeros_and_cover_every_row():
    # rows with 1, 1, 1, 1, 4, 4 non-zeros (12 in all): two blocks of 6 -> rows 0..4 (8) is past half; the cut
    # is the first row whose prefix reaches 6: crow [0,1,2,3,4,8,12] -> searchsorted(6) = 5
    crow = torch.tensor([0, 1, 2, 3, 4, 8, 12])
    assert row_bounds(crow, 2) == ((0, 5), (5, 6))
    assert row_bounds(crow, 1) == ((0, 6),)
    # as many blocks as rows: one row each, none empty, even where the non-zeros would put two cuts together
    assert row_bounds(crow, 6) == ((0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6))
    with pytest.raises(HomerankError, match="exceeds the graph's 6 nodes"):
        row_bounds(crow, 7)


def test_row_blocks_stack_back_to_the_adjacency():
    adjacency = _tiny_data().adjacency
    blocks = [row_block(adjacency, rank, 3) for rank in range(3)]
    dense = adjacency.to_dense()
    assert torch.equal(torch.cat([block.rows.to_dense() for block in blocks]), dense)
    for block in blocks:  # the transpose the backward pass uses
        assert torch.equal(block.rows_t.to_dense(), dense[block.start : block.stop].T)


@pytest.mark.parametrize("loss", ["bpr", "softmax"])
def test_two_gloo_ranks_follow_the_single_process_trajectory(loss):
    """Rank r takes 1/W of every global batch and the gradients are summed: the same losses, validation metrics
    and embeddings as one process, up to float32 summation order (stated tolerance: 1e-5)."""
    data = _tiny_data()
    results = {}
    for world_size in (1, 2):
        config = TrainConfig(epochs=3, batch_size=512, loss=loss, negatives=1 if loss == "bpr" else 64,
                             world_size=world_size, threads=1)
        results[world_size] = train_lightgcn(data, config, EvalConfig(), 0, torch.device("cpu"),
                                             show_progress=False)
    one, two = results[1], results[2]
    assert [h["loss"] for h in two.history] == pytest.approx([h["loss"] for h in one.history], abs=1e-5)
    assert [h["valid"]["ndcg@20"] for h in two.history] == pytest.approx(
        [h["valid"]["ndcg@20"] for h in one.history], abs=1e-5)
    assert torch.allclose(two.model.layer0, one.model.layer0, atol=1e-5)
    assert two.best_epoch == one.best_epoch
    assert two.history[0]["world_size"] == 2
    # one all-reduce of the (U + I, d) gradient per step: 420 nodes x 64 floats x 4 bytes
    assert two.history[0]["all_reduce_bytes_per_step"] == 420 * 64 * 4


def _kill_a_rank_after(folder, epoch_file: str, killed: list[int]) -> None:
    """SIGKILL the newest spawned rank once ``folder/epoch_file`` exists (at most 120 s)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (folder / epoch_file).exists():
        time.sleep(0.05)
    ranks = [child for child in psutil.Process().children(recursive=True) if "python" in child.name().lower()]
    if ranks:
        victim = max(ranks, key=lambda child: child.create_time())
        victim.send_signal(signal.SIGKILL)
        killed.append(victim.pid)


def test_a_killed_rank_fails_the_job_cleanly_and_resume_finishes_it(tmp_path):
    data = _tiny_data()
    config = TrainConfig(epochs=6, batch_size=256, world_size=2, threads=1, checkpoint_every=1, keep_checkpoints=6)
    reference = train_lightgcn(data, config, EvalConfig(), 0, torch.device("cpu"), checkpoint_dir=tmp_path / "ref",
                               show_progress=False)
    folder = tmp_path / "killed"
    folder.mkdir()
    killed: list[int] = []
    killer = threading.Thread(target=_kill_a_rank_after, args=(folder, "epoch_0002.pt", killed))
    killer.start()
    with pytest.raises(HomerankError, match=r"rank \d ended with signal SIGKILL.*--resume"):
        train_lightgcn(data, config, EvalConfig(), 0, torch.device("cpu"), checkpoint_dir=folder,
                       show_progress=False)
    killer.join()
    assert killed, "no rank was killed"
    assert not (folder / "best.pt").exists()  # the failed run published nothing final
    resumed = train_lightgcn(data, config, EvalConfig(), 0, torch.device("cpu"), checkpoint_dir=folder,
                             show_progress=False, resume=True)
    assert resumed.epochs == reference.epochs == 6
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in reference.history], abs=1e-5)
    assert torch.allclose(resumed.model.layer0, reference.model.layer0, atol=1e-5)


def test_a_rank_s_homerank_error_keeps_its_class_and_exit_status():
    """A diverged training inside the ranks is the same TrainingDivergedError (exit 3) as in one process."""
    from homerank.engine.errors import TrainingDivergedError

    config = TrainConfig(epochs=2, batch_size=512, lr=1e30, world_size=2, threads=1)
    with pytest.raises(TrainingDivergedError, match="training diverged"):
        train_lightgcn(_tiny_data(), config, EvalConfig(), 0, torch.device("cpu"), show_progress=False)
