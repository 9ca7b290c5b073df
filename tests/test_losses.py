"""The counted L2 penalty equals the gathered one, in value and gradient."""

from __future__ import annotations

import torch

from homerank.gnn.losses import counted_l2_penalty, l2_penalty


def test_counted_l2_penalty_equals_the_gathered_penalty_and_its_gradient() -> None:
    torch.manual_seed(0)
    table = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    users, positives, negatives = torch.tensor([0, 0, 2]), torch.tensor([4, 5, 4]), torch.tensor([6, 4, 3])
    gathered = l2_penalty(table[users], table[positives], table[negatives])
    (expected_grad,) = torch.autograd.grad(gathered, table)
    counted = counted_l2_penalty(table, torch.cat([users, positives, negatives]), batch=3)
    (grad,) = torch.autograd.grad(counted, table)
    assert torch.allclose(counted, gathered)
    assert torch.allclose(grad, expected_grad)
    # by hand: row 4 occurs three times, rows 0 twice, 2/3/5/6 once, row 1 never
    norms = table.detach().pow(2).sum(-1)
    by_hand = (2 * norms[0] + norms[2] + norms[3] + 3 * norms[4] + norms[5] + norms[6]) / 6
    assert torch.allclose(counted.detach(), by_hand)
    assert torch.equal(grad[1], torch.zeros(3, dtype=torch.float64))
