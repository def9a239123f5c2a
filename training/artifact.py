"""f_θ alone: the artefact training leaves behind and export reads (no projector, predictor or target)."""

from __future__ import annotations

import os
from pathlib import Path

from training.checkpoint import load_tagged, save_tagged
from training.networks import Encoder, EncoderConfig, build_encoder

ENCODER_FORMAT = "byol-embed/encoder/1"


class ArtifactError(ValueError):
    """An encoder file is missing, corrupt or not ours."""


def save_encoder(path: str | os.PathLike, encoder: Encoder, meta: dict | None = None) -> Path:
    """Write ``{format, encoder_config, state_dict, meta}`` atomically. ``meta``: config, data fingerprint,
    metrics, parent version, checkpoint path — whatever export should copy into the manifest."""
    return save_tagged(path, ENCODER_FORMAT, {
        "encoder_config": encoder.cfg.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in encoder.state_dict().items()},
        "meta": meta or {},
    })


def load_encoder(path: str | os.PathLike) -> tuple[Encoder, dict]:
    """Rebuild f_θ from the file alone; returns ``(encoder in eval mode, meta)``."""
    obj = load_tagged(path, ENCODER_FORMAT, "encoder file", ArtifactError)
    encoder = build_encoder(EncoderConfig(**obj["encoder_config"]))
    encoder.load_state_dict(obj["state_dict"])
    encoder.eval()
    return encoder, obj.get("meta", {})
