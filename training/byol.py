"""BYOL's networks and its update: online f→g→q, the EMA target f→g, and one training step.

Kept apart from the loop (``training.train``) so that benchmarks and tests can run the exact step without the
run around it, and so that the loop's parts (``training.state``) can build the networks without importing the loop.
"""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn

from training.augment import BYOLAugment
from training.config import TrainConfig
from training.ema import update_target
from training.loss import byol_loss
from training.networks import EncoderConfig, MLPHead, build_encoder


class Branch(nn.Module):
    """Encoder f followed by projector g: the part shared by the online and the target network."""

    def __init__(self, encoder_cfg: EncoderConfig, projector_hidden: int, out_dim: int) -> None:
        super().__init__()
        self.encoder = build_encoder(encoder_cfg)
        self.projector = MLPHead(self.encoder.out_dim, projector_hidden, out_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.encoder(x)
        return y, self.projector(y)


class Online(nn.Module):
    """f_θ → g_θ → q_θ over both views in one call (one DDP forward per step)."""

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        h = cfg.heads
        self.branch = Branch(cfg.encoder, h.projector_hidden, h.out_dim)
        self.predictor = MLPHead(h.out_dim, h.predictor_hidden, h.out_dim)

    def forward(self, v1: torch.Tensor, v2: torch.Tensor):
        y1, z1 = self.branch(v1)
        _, z2 = self.branch(v2)  # the two views get their own BN statistics, as in the reference
        return y1, self.predictor(z1), self.predictor(z2)


def unwrap(module: nn.Module) -> nn.Module:
    """The module itself under ``torch.compile`` (``_orig_mod``) and DDP (``module``) wrappers."""
    while True:
        if isinstance(getattr(module, "_orig_mod", None), nn.Module):
            module = module._orig_mod
        elif isinstance(module, nn.parallel.DistributedDataParallel):
            module = module.module
        else:
            return module


def make_target(online: Online) -> Branch:
    """ξ starts as a copy of θ's encoder + projector, takes no gradients and always runs in train mode."""
    target = copy.deepcopy(online.branch)
    for p in target.parameters():
        p.requires_grad_(False)
    return target.train()


def train_step(online: nn.Module, target: Branch, optimizer: torch.optim.Optimizer, augment: BYOLAugment,
               images: torch.Tensor, generator: torch.Generator, lr: float, tau: float, amp: bool,
               channels_last: bool, shard: tuple[int, int] = (0, 1)) -> tuple[torch.Tensor, torch.Tensor]:
    """One BYOL update; returns (loss, online representation of view 1) for logging (both detached)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    v1, v2 = augment(images, generator=generator, shard=shard)
    if channels_last:
        v1, v2 = v1.contiguous(memory_format=torch.channels_last), v2.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(v1.device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
    with autocast:
        y1, p1, p2 = online(v1, v2)
        with torch.no_grad():
            _, t1 = target(v1)
            _, t2 = target(v2)
        loss = byol_loss(p1, p2, t1, t2)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    update_target(unwrap(target), unwrap(online).branch, tau)
    return loss.detach(), y1.detach()
