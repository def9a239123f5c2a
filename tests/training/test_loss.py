import math

import pytest
import torch

from training.loss import byol_loss, regression_loss


def test_regression_loss_on_known_vectors():
    p = torch.tensor([[1.0, 0.0], [1.0, 0.0], [3.0, 0.0], [1.0, 1.0]])
    z = torch.tensor([[2.0, 0.0], [0.0, 5.0], [-1.0, 0.0], [1.0, 0.0]])
    expected = torch.tensor([0.0, 2.0, 4.0, 2.0 - 2.0 / math.sqrt(2.0)])
    assert torch.allclose(regression_loss(p, z), expected, atol=1e-6)


def test_byol_loss_sums_the_two_symmetric_terms():
    p1, p2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    z1, z2 = torch.tensor([[0.0, 1.0]]), torch.tensor([[-1.0, 0.0]])
    # term 1: cos(p1, z2) = -1 → 4; term 2: cos(p2, z1) = 1 → 0; summed (not averaged) → 4
    assert byol_loss(p1, p2, z1, z2).item() == pytest.approx(4.0)


@pytest.mark.parametrize("batch", [1, 3, 16])
def test_byol_loss_is_symmetric_in_the_views(batch):
    g = torch.Generator().manual_seed(batch)
    p1, p2, z1, z2 = (torch.randn(batch, 8, generator=g) for _ in range(4))
    assert torch.allclose(byol_loss(p1, p2, z1, z2), byol_loss(p2, p1, z2, z1))


def test_target_receives_no_gradient():
    p1, p2 = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    z1, z2 = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    byol_loss(p1, p2, z1, z2).backward()
    assert p1.grad is not None and p1.grad.abs().sum() > 0
    assert z1.grad is None and z2.grad is None
