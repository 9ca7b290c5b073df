"""The counted L2 penalty equals the gathered one, in value and gradient."""

from __future__ import annotations

import torch

from homerank.gnn.losses import add_counted_l2_gradient, counted_l2_penalty, l2_penalty, row_counts


def test_counted_l2_penalty_equals_the_gathered_penalty_and_its_gradient() -> None:
    torch.manual_seed(0)
    table = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    users, positives, negatives = torch.tensor([0, 0, 2]), torch.tensor([4, 5, 4]), torch.tensor([6, 4, 3])
    gathered = l2_penalty(table[users], table[positives], table[negatives])
    (expected_grad,) = torch.autograd.grad(gathered, table)
    counts = row_counts(7, (users, 0), (positives, 0), (negatives, 0))
    assert counts.tolist() == [2, 0, 1, 1, 3, 1, 1]
    counted = counted_l2_penalty(table, counts, batch=3)
    (grad,) = torch.autograd.grad(counted, table)
    assert torch.allclose(counted, gathered)
    assert torch.allclose(grad, expected_grad)
    # by hand: row 4 occurs three times, rows 0 twice, 2/3/5/6 once, row 1 never
    norms = table.detach().pow(2).sum(-1)
    by_hand = (2 * norms[0] + norms[2] + norms[3] + 3 * norms[4] + norms[5] + norms[6]) / 6
    assert torch.allclose(counted.detach(), by_hand)
    assert torch.equal(grad[1], torch.zeros(3, dtype=torch.float64))
    # the same gradient added in place, scaled as the training loop scales it (l2 0.5, a rank's share 0.25)
    start = torch.randn(7, 3, dtype=torch.float64)
    summed = start.clone()
    add_counted_l2_gradient(summed, table.detach(), counts, scale=0.5 * 0.25 / 3)
    assert torch.allclose(summed, start + 0.5 * 0.25 * expected_grad)


def test_row_counts_place_item_groups_after_the_users() -> None:
    """Users at offset 0 and items at offset U = 3 of one table of 3 + 4 rows; an item group shorter than the
    items (no draw of the last item) still lands at its rows."""
    counts = row_counts(7, (torch.tensor([2, 2, 0], dtype=torch.int32), 0),
                        (torch.tensor([0, 1], dtype=torch.int32), 3), (torch.tensor([1]), 3))
    assert counts.tolist() == [1, 0, 2, 1, 2, 0, 0]


def test_chunked_bpr_loss_has_the_whole_batch_value_and_gradients() -> None:
    """Pieces of 7 triples (B = 50, not a multiple) through a propagation-like graph (the tables are a product of
    a parameter, as LightGCN's layers are): same loss, same parameter gradient as one `bpr_loss` of the whole batch,
    also scaled by an outer factor as the training loop does; B <= chunk is `bpr_loss` itself."""
    from homerank.gnn.losses import bpr_loss, chunked_bpr_loss

    generator = torch.Generator().manual_seed(0)
    table = torch.randn(30, 8, generator=generator, requires_grad=True)  # layer 0 of 12 users and 18 items
    mix = torch.randn(30, 30, generator=generator) / 5
    users = torch.randint(0, 12, (50,), generator=generator)
    positives = torch.randint(0, 18, (50,), generator=generator)
    negatives = torch.randint(0, 18, (50,), generator=generator)

    def value_and_gradient(loss_fn) -> tuple[torch.Tensor, torch.Tensor]:
        table.grad = None
        final = mix @ table  # every row depends on every layer-0 row
        loss = loss_fn(final[:12], final[12:])
        (loss * 0.375).backward()
        return loss.detach(), table.grad.clone()

    whole = value_and_gradient(lambda u, i: bpr_loss(u[users], i[positives], i[negatives]))
    chunked = value_and_gradient(lambda u, i: chunked_bpr_loss(u, i, users, positives, negatives, chunk=7))
    torch.testing.assert_close(chunked[0], whole[0])
    torch.testing.assert_close(chunked[1], whole[1])
    assert whole[1].abs().sum() > 0
    one_piece = value_and_gradient(lambda u, i: chunked_bpr_loss(u, i, users, positives, negatives, chunk=50))
    torch.testing.assert_close(one_piece[1], whole[1])
    table.grad = None  # one (N, d) table for users and items, items as rows 12 + i: the same value and gradient
    final = mix @ table
    shared = chunked_bpr_loss(final, final, users, 12 + positives, 12 + negatives, chunk=7)
    (shared * 0.375).backward()
    torch.testing.assert_close(shared.detach(), whole[0])
    torch.testing.assert_close(table.grad, whole[1])
    with torch.no_grad():  # no gradient wanted: the plain loss
        final = mix @ table
        assert torch.allclose(chunked_bpr_loss(final[:12], final[12:], users, positives, negatives, chunk=7), whole[0])


def test_training_with_bpr_in_pieces_equals_training_with_whole_batches(monkeypatch) -> None:
    """The training loop's BPR steps through `chunked_bpr_loss`: pieces of 16 triples give the embeddings of
    whole batches (two epochs of the tiny log, same seed) up to float summation order."""
    from homerank.gnn import losses
    from homerank.gnn.config import EvalConfig, TrainConfig
    from homerank.gnn.train import train_lightgcn
    from tests.test_distributed_training import _tiny_data

    def trained():
        result = train_lightgcn(_tiny_data(), TrainConfig(epochs=2, embedding_dim=8, num_layers=2), EvalConfig(ks=[20]),
                                seed=3, device=torch.device("cpu"), show_progress=False)
        return result.model.layer0.detach().clone(), [h["loss"] for h in result.history]

    calls: list[int] = []
    plain = losses.bpr_loss
    accumulated = losses._AccumulatedGradient.apply

    def counted(user, positive, negative):
        calls.append(user.shape[0])
        return plain(user, positive, negative)

    def counted_pieces(total, *tables_and_grads):
        calls.append(-1)  # a batch summed in pieces
        return accumulated(total, *tables_and_grads)

    monkeypatch.setattr(losses, "bpr_loss", counted)
    monkeypatch.setattr(losses._AccumulatedGradient, "apply", counted_pieces)
    whole, whole_losses = trained()
    whole_calls, calls[:] = list(calls), []
    monkeypatch.setattr(losses, "BPR_CHUNK_PAIRS", 16)
    pieces, piece_losses = trained()
    assert whole_calls and min(whole_calls) > 16 and calls and set(calls) == {-1}  # every batch in pieces
    torch.testing.assert_close(pieces, whole, rtol=1e-4, atol=1e-5)  # Adam on float-order noise: ~5e-6
    torch.testing.assert_close(piece_losses, whole_losses, rtol=1e-5, atol=1e-7)


def test_training_steps_map_large_allocations_and_the_evaluation_reuses_the_heap(monkeypatch) -> None:
    """Every epoch's steps run inside `large_allocations_mapped` (their 1-30 MB transients are unmapped when freed),
    and the validation between epochs runs outside it (heap reuse for its hot loop); the loss is the same either
    way (the policy moves memory, not numbers)."""
    from contextlib import contextmanager

    from homerank.gnn import train as train_module
    from homerank.gnn.config import EvalConfig, TrainConfig
    from homerank.gnn.train import train_lightgcn
    from tests.test_distributed_training import _tiny_data

    events: list[str] = []
    mapped = [False]

    @contextmanager
    def recording():
        events.append("enter")
        mapped[0] = True
        try:
            yield lambda: True
        finally:
            mapped[0] = False
            events.append("exit")

    evaluate = train_module.evaluate_ranking

    def recorded_evaluation(*args, **kwargs):
        events.append("evaluate while mapped" if mapped[0] else "evaluate")
        return evaluate(*args, **kwargs)

    def losses():
        result = train_lightgcn(_tiny_data(), TrainConfig(epochs=2, embedding_dim=8, num_layers=2),
                                EvalConfig(ks=[20]), seed=3, device=torch.device("cpu"), show_progress=False)
        return [h["loss"] for h in result.history]

    plain = losses()
    monkeypatch.setattr(train_module, "large_allocations_mapped", recording)
    monkeypatch.setattr(train_module, "evaluate_ranking", recorded_evaluation)
    assert losses() == plain
    assert events == ["enter", "exit", "evaluate", "enter", "exit", "evaluate"]
