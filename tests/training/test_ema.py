import torch
from torch import nn

from training.ema import update_target


def _net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_parameters_move_by_one_minus_tau():
    online, target = _net(0), _net(1)
    before = [p.clone() for p in target.parameters()]
    update_target(target, online, 0.9)
    for t, b, o in zip(target.parameters(), before, online.parameters(), strict=True):
        assert torch.allclose(t, 0.9 * b + 0.1 * o)


def test_batchnorm_buffers_are_copied_from_online():
    online, target = _net(0), _net(1)
    online.train()(torch.randn(8, 3))
    update_target(target, online, 0.99)
    assert torch.equal(target[1].running_mean, online[1].running_mean)
    assert torch.equal(target[1].num_batches_tracked, online[1].num_batches_tracked)


def test_tau_one_leaves_parameters_unchanged():
    online, target = _net(0), _net(1)
    before = [p.clone() for p in target.parameters()]
    update_target(target, online, 1.0)
    assert all(torch.equal(t, b) for t, b in zip(target.parameters(), before, strict=True))
