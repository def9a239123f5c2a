"""Self-describing training checkpoints written atomically (temp file → fsync → rename)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from serving.contract.atomic import atomic_write_bytes

CHECKPOINT_FORMAT = "byol-embed/checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt or not ours."""


def save_tagged(path: str | os.PathLike, fmt: str, obj: dict) -> Path:
    """``torch.save`` ``{"format": fmt, **obj}`` to memory first, then replace ``path`` atomically: a crash never
    leaves a torn file (checkpoints and encoder files alike)."""
    buf = io.BytesIO()
    torch.save({"format": fmt, **obj}, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_tagged(path: str | os.PathLike, fmt: str, what: str, error: type[Exception], kind: str = "") -> dict:
    """Load a file written by :func:`save_tagged` on CPU (tensors only, no pickled code); any problem raises
    ``error`` with one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        detail = (str(exc).strip().splitlines() or [""])[0][:120]
        raise error(f"cannot read {what} {path}: {type(exc).__name__}: {detail}") from None
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        raise error(f"{path} is not a byol-embed {kind or what}")
    return obj


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    return save_tagged(path, CHECKPOINT_FORMAT, state)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint on CPU; raise :class:`CheckpointError` with one clear line on any problem."""
    obj = load_tagged(path, CHECKPOINT_FORMAT, "checkpoint", CheckpointError, kind="training checkpoint")
    for key in ("online", "target", "optimizer", "step", "config"):
        if key not in obj:
            raise CheckpointError(f"checkpoint {path} lacks {key!r}")
    return obj
