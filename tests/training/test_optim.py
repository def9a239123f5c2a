import torch
from torch import nn

from training.optim import LARS, build_lars, param_groups


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


def test_biases_and_bn_are_excluded_from_decay_and_adaptation():
    model = _model()
    adapted, excluded = param_groups(model, 1e-2)
    assert {id(p) for p in adapted["params"]} == {id(model[0].weight), id(model[3].weight)}
    assert adapted["lars"] and adapted["weight_decay"] == 1e-2
    assert not excluded["lars"] and excluded["weight_decay"] == 0.0
    assert {id(p) for p in excluded["params"]} == {id(model[0].bias), id(model[1].weight), id(model[1].bias),
                                                   id(model[3].bias)}


def test_excluded_parameters_take_a_plain_sgd_step():
    model = _model()
    opt = build_lars(model, lr=0.5, momentum=0.9, weight_decay=0.1, trust=1e-3)
    model(torch.randn(16, 4)).sum().backward()
    bias, grad = model[0].bias.detach().clone(), model[0].bias.grad.clone()
    opt.step()
    assert torch.allclose(model[0].bias, bias - 0.5 * grad)


def test_adapted_weights_step_by_trust_ratio():
    w = nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ‖w‖ = 5
    opt = LARS([{"params": [w], "lars": True}], lr=1.0, momentum=0.9, weight_decay=0.0, trust_coefficient=1e-3)
    w.grad = torch.tensor([[0.0, 10.0]])  # ‖g‖ = 10 → step = lr · 1e-3 · 5 / 10 · g
    opt.step()
    assert torch.allclose(w, torch.tensor([[3.0, 4.0 - 1e-3 * 5.0]]))


def test_weight_decay_enters_before_adaptation():
    w = nn.Parameter(torch.tensor([[1.0, 0.0]]))
    opt = LARS([{"params": [w], "lars": True}], lr=1.0, momentum=0.0, weight_decay=1.0, trust_coefficient=0.5)
    w.grad = torch.tensor([[0.0, 1.0]])  # g + wd·w = [1, 1], ‖·‖ = √2, ‖w‖ = 1
    opt.step()
    step = 0.5 * 1.0 / 2 ** 0.5
    assert torch.allclose(w, torch.tensor([[1.0 - step, -step]]))


def test_clipped_trust_ratio_never_steps_faster_than_sgd():
    """LARC (clip_lr): the factor is min(η‖w‖/(lr‖g‖), 1); with a large η it is 1, i.e. a plain SGD step."""
    w = nn.Parameter(torch.tensor([[3.0, 4.0]]))
    opt = LARS([{"params": [w], "lars": True}], lr=0.1, momentum=0.0, weight_decay=0.0, trust_coefficient=10.0,
               clip_lr=True)
    w.grad = torch.tensor([[0.0, 10.0]])  # unclipped factor 10·5/10 = 5 → clipped to min(5/0.1, 1) = 1
    opt.step()
    assert torch.allclose(w, torch.tensor([[3.0, 4.0 - 0.1 * 10.0]]))
