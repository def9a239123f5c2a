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
    v ← m·v + g; w ← w − lr·v. With ``clip_lr`` (LARC, as solo-learn's CIFAR recipe) the factor is
    min(η‖w‖/(lr‖g‖), 1) instead: the adapted step never exceeds plain SGD's.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 1.5e-6,
                 trust_coefficient: float = 1e-3, clip_lr: bool = False) -> None:
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient,
                        lars=True, clip_lr=clip_lr)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._update(group, params)
        return loss

    def _update(self, group: dict, params: list[torch.Tensor]) -> None:
        """One group, vectorised with ``torch._foreach_*``: a handful of kernels for all tensors instead of a Python
        loop of small ones per parameter, and no host synchronisation (the trust ratios stay on the device)."""
        wd, lr, mom, eta = group["weight_decay"], group["lr"], group["momentum"], group["trust_coefficient"]
        grads = [p.grad for p in params]
        grads = torch._foreach_add(grads, params, alpha=wd) if wd else [g.clone() for g in grads]
        if group["lars"]:
            w_norm = torch.stack(torch._foreach_norm(params))
            g_norm = torch.stack(torch._foreach_norm(grads))
            trust = torch.where((w_norm > 0) & (g_norm > 0), eta * w_norm / g_norm, torch.ones_like(w_norm))
            if group.get("clip_lr"):  # LARC clipping (solo-learn's CIFAR recipe): never step faster than plain SGD
                trust = torch.clamp(trust / lr, max=1.0) if lr > 0 else trust
            torch._foreach_mul_(grads, list(trust.unbind()))
        bufs = []
        for p, g in zip(params, grads, strict=True):
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = g  # first step: v = g (g is a fresh tensor here)
            else:
                bufs.append((state["momentum_buffer"], g))
        if bufs:
            old, new = [b for b, _ in bufs], [g for _, g in bufs]
            torch._foreach_mul_(old, mom)
            torch._foreach_add_(old, new)
        torch._foreach_add_(params, [self.state[p]["momentum_buffer"] for p in params], alpha=-lr)


def build_lars(model: nn.Module, lr: float, momentum: float, weight_decay: float, trust: float,
               clip_lr: bool = False) -> LARS:
    return LARS(param_groups(model, weight_decay), lr=lr, momentum=momentum, weight_decay=weight_decay,
                trust_coefficient=trust, clip_lr=clip_lr)
