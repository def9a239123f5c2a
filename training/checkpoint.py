"""Self-describing training checkpoints written atomically (temp file → fsync → rename)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from serving.atomic import atomic_write_bytes

CHECKPOINT_FORMAT = "byol-embed/checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt or not ours."""


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Serialise ``state`` to memory first, then replace ``path`` atomically: a crash never leaves a torn file."""
    buf = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint on CPU; raise :class:`CheckpointError` with one clear line on any problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a byol-embed training checkpoint")
    for key in ("online", "target", "optimizer", "step", "config"):
        if key not in obj:
            raise CheckpointError(f"checkpoint {path} lacks {key!r}")
    return obj
