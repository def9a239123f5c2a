"""f_θ alone: the artefact training leaves behind and export reads (no projector, predictor or target)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from serving.atomic import atomic_write_bytes
from training.networks import Encoder, EncoderConfig, build_encoder

ENCODER_FORMAT = "byol-embed/encoder/1"


class ArtifactError(ValueError):
    """An encoder file is missing, corrupt or not ours."""


def save_encoder(path: str | os.PathLike, encoder: Encoder, meta: dict | None = None) -> Path:
    """Write ``{format, encoder_config, state_dict, meta}`` atomically. ``meta``: config, data fingerprint,
    metrics, parent version, checkpoint path — whatever export should copy into the manifest."""
    buf = io.BytesIO()
    torch.save(
        {
            "format": ENCODER_FORMAT,
            "encoder_config": encoder.cfg.to_dict(),
            "state_dict": {k: v.detach().cpu() for k, v in encoder.state_dict().items()},
            "meta": meta or {},
        },
        buf,
    )
    return atomic_write_bytes(path, buf.getvalue())


def load_encoder(path: str | os.PathLike) -> tuple[Encoder, dict]:
    """Rebuild f_θ from the file alone; returns ``(encoder in eval mode, meta)``."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"encoder file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ArtifactError(f"cannot read encoder file {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, dict) or obj.get("format") != ENCODER_FORMAT:
        raise ArtifactError(f"{path} is not a byol-embed encoder file")
    encoder = build_encoder(EncoderConfig(**obj["encoder_config"]))
    encoder.load_state_dict(obj["state_dict"])
    encoder.eval()
    return encoder, obj.get("meta", {})
