import pytest
import torch

from homerank.engine.errors import HomerankError
from homerank.gnn.config import EvalConfig, TrainConfig
from homerank.gnn.losses import BPR_CHUNK_PAIRS
from homerank.gnn.memory import SAFETY, check_training_memory, estimate_training_memory


def test_estimate_by_hand():
    train = TrainConfig(embedding_dim=8, num_layers=2, batch_size=100, negatives=1, loss="bpr")
    parts = estimate_training_memory(10, 20, 50, train, EvalConfig(batch_size=4), average_degree=5.0)
    assert parts["parameters_and_optimizer"] == 3 * 30 * 8 * 4  # table and two Adam moments
    assert parts["propagation"] == 3 * 30 * 8 * 4  # the loss's gradient and two Horner buffers
    assert parts["adjacency"] == 100 * 8 + 31 * 4  # int32 indices
    assert parts["training_pairs"] == 50 * 20  # int32 users, items and order, int64 keys
    assert parts["loss"] == 100 * 1 * 8 * 4 * 4  # one piece's buffers
    assert parts["ranking_block"] == 4 * 20 * 4 * 3
    # BPR is scored in pieces (gnn.losses.chunked_bpr_loss), a CPU ranking block is at most 256 MiB
    big = TrainConfig(embedding_dim=8, num_layers=2, batch_size=10**6, negatives=1, loss="bpr", steps_per_epoch=None)
    large = estimate_training_memory(10**5, 10**6, 10**7, big, EvalConfig(batch_size=2048), average_degree=100.0)
    assert large["loss"] == BPR_CHUNK_PAIRS * 8 * 4 * 4
    assert large["ranking_block"] == (256 * 2**20 // (4 * 10**6)) * 10**6 * 4 * 3
    estimate = check_training_memory(10, 20, 50, train, EvalConfig(batch_size=4), torch.device("cpu"), 10**9)
    assert estimate.bytes_needed == int(sum(parts.values()) * SAFETY)


def test_guard_fails_early_with_a_suggestion():
    train = TrainConfig(embedding_dim=512)
    with pytest.raises(HomerankError, match=r"GiB needed .*largest part: parameters_and_optimizer.*embedding_dim"):
        check_training_memory(2_000_000, 1_000_000, 10_000_000, train, EvalConfig(), torch.device("cpu"), 2**30)
