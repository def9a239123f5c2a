"""LARS (You et al. 2017) as BYOL uses it: biases and BatchNorm parameters get neither weight decay nor the
trust-ratio adaptation (paper: trust coefficient 1e-3, momentum 0.9, weight decay 1.5e-6)."""

from __future__ import annotations

import torch
from torch import nn


def exclude_from_lars(name: str, param: torch.Tensor) -> bool:
    """Biases and normalisation parameters (all 1-D tensors in our networks) are excluded, as in the paper."""
    return param.ndim <= 1 or name.endswith(".bias")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: adapted + decayed weights, and excluded biases/BN (``lars=False``, no decay)."""
    adapted, excluded = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (excluded if exclude_from_lars(name, p) else adapted).append(p)
    return [
        {"params": adapted, "weight_decay": weight_decay, "lars": True},
        {"params": excluded, "weight_decay": 0.0, "lars": False},
    ]


class LARS(torch.optim.Optimizer):
    """SGD with momentum whose per-tensor step is scaled by ``trust · ‖w‖ / ‖g + wd·w‖`` in ``lars`` groups.

    Update (reference JAX BYOL): g ← g + wd·w; if lars: g ← g · η‖w‖/‖g‖ (1 when either norm is 0);
    v ← m·v + g; w ← w − lr·v.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 1.5e-6,
                 trust_coefficient: float = 1e-3) -> None:
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient,
                        lars=True)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            wd, lr, mom, eta = group["weight_decay"], group["lr"], group["momentum"], group["trust_coefficient"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if wd:
                    g = g.add(p, alpha=wd)
                if group["lars"]:
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    trust = torch.where((w_norm > 0) & (g_norm > 0), eta * w_norm / g_norm, torch.ones_like(w_norm))
                    g = g * trust
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(g).detach()
                else:
                    state["momentum_buffer"].mul_(mom).add_(g)
                p.add_(state["momentum_buffer"], alpha=-lr)
        return loss


def build_lars(model: nn.Module, lr: float, momentum: float, weight_decay: float, trust: float) -> LARS:
    return LARS(param_groups(model, weight_decay), lr=lr, momentum=momentum, weight_decay=weight_decay,
                trust_coefficient=trust)
