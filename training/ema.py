"""Target network update ξ ← τξ + (1 − τ)θ.

BatchNorm buffers (running mean/var, batch counter) are *copied* from the online network, not averaged: the
target always runs in train mode (batch statistics), so its running stats only matter for the exported encoder,
which is the online f_θ anyway; copying keeps them consistent with the weights and makes the update exact and
cheap. This is what the reference JAX code does in effect (its BN state is not part of the EMA'd params).
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def update_target(target: nn.Module, online: nn.Module, tau: float) -> None:
    """EMA the parameters with factor ``tau`` and copy the buffers (module trees must match)."""
    t_params = [p for p in target.parameters()]
    o_params = [p for p in online.parameters()]
    if len(t_params) != len(o_params):
        raise ValueError("target and online networks have different parameter lists")
    if t_params:
        torch._foreach_mul_(t_params, tau)
        torch._foreach_add_(t_params, o_params, alpha=1.0 - tau)
    for tb, ob in zip(target.buffers(), online.buffers(), strict=True):
        tb.copy_(ob)
