"""PyTorch encoders as embedding functions for the one evaluation path (``index.metrics``).

Only what needs torch lives here: running ``encoder.pt`` (or an untrained twin) over uint8 images. The metrics
themselves — weighted kNN, linear probe, raw pixels — are ``index.metrics``, shared with the ONNX side.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def embed_images(encoder: nn.Module, images: np.ndarray, batch_size: int = 256,
                 device: str | torch.device | None = None) -> np.ndarray:
    """uint8 ``[N, H, W, 3]`` → L2-normalised float32 ``[N, D]`` (encoder in eval mode; its mode is restored)."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images [N, H, W, 3], got {images.dtype} {list(images.shape)}")
    size = getattr(getattr(encoder, "cfg", None), "input_size", images.shape[1])
    if images.shape[1:3] != (size, size):
        raise ValueError(f"images are {images.shape[1]}×{images.shape[2]} px, the encoder expects {size}×{size}")
    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    out = []
    try:
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(images[start: start + batch_size]).to(device)
            x = x.permute(0, 3, 1, 2).float().div_(255.0)
            out.append(encoder(x).float().cpu().numpy())
    finally:
        encoder.train(was_training)
    x = np.concatenate(out) if out else np.zeros((0, 1), np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def embedder(encoder: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """``images → vectors`` of a PyTorch encoder, the shape ``index.metrics.evaluate`` takes."""
    return lambda images: embed_images(encoder, images)


@torch.no_grad()
def calibrate_batchnorm(encoder: nn.Module, images: np.ndarray, batches: int = 20, batch_size: int = 256,
                        seed: int = 0) -> nn.Module:
    """Re-estimate every BatchNorm's running mean/var from ``batches`` random batches of ``images`` (cumulative
    average, no weight changes). Why: an untrained encoder's running statistics are the init's (0, 1), not its
    activations', so in eval mode its features are badly scaled and the random-init baseline looks worse than it is.
    """
    bns = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or not len(images):
        return encoder
    device = next(encoder.parameters()).device
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the calibration batches
    order = np.random.default_rng(seed).permutation(len(images))
    was_training = encoder.training
    encoder.train()
    try:
        for i in range(min(batches, max(1, len(images) // batch_size))):
            idx = np.sort(order[i * batch_size:(i + 1) * batch_size])
            x = torch.from_numpy(images[idx]).to(device).permute(0, 3, 1, 2).float().div_(255.0)
            encoder(x)
    finally:
        for m, momentum in zip(bns, saved, strict=True):
            m.momentum = momentum
        encoder.train(was_training)
    return encoder


def random_init_like(encoder: nn.Module, seed: int = 0, calibrate_on: np.ndarray | None = None) -> nn.Module:
    """An untrained encoder of the same architecture (without touching the caller's RNG), its BatchNorm statistics
    calibrated on ``calibrate_on`` (training images) when given — the fair random-init baseline."""
    from training.networks import build_encoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        rnd = build_encoder(encoder.cfg)
    rnd = rnd.to(next(encoder.parameters()).device)
    if calibrate_on is not None:
        calibrate_batchnorm(rnd, calibrate_on, seed=seed)
    return rnd.eval()
