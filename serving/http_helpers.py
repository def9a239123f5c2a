"""Torch-free helpers behind the HTTP endpoints: upload → pixels, token check, results → JSON.

Index and collection writes are not here: they go through ``index.writes``, the one write path.

Kept apart from ``service.py`` so the service stays a list of thin endpoints, and so each rule (what a bad upload
answers, how the token is compared) lives in one place.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

import numpy as np

from serving.contract.image import ImageError, load
from serving.errors import BadRequest, Forbidden, TooLarge, Unauthorized

MAX_IMAGES = int(os.environ.get("BYOL_MAX_IMAGES", "256"))  # images per request to /embed_batch and /index/add
MAX_K = 1000  # neighbours per /search


def read_upload(path: Path) -> bytes:
    """The bytes BentoML wrote for one uploaded file (it spools every upload to a per-request temp file)."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise BadRequest(f"cannot read the upload: {exc}") from None


def decode_uploads(uploads: list[Path], size: int) -> tuple[np.ndarray, list[bytes]]:
    """Uploads → ``uint8 [N, size, size, 3]`` and their raw bytes; a bad one → 400 naming it by position."""
    if not uploads:
        raise BadRequest("no images in the request: send one or more files in the 'images' field")
    if len(uploads) > MAX_IMAGES:
        raise TooLarge(f"too many images in one request: {len(uploads)} (limit {MAX_IMAGES})")
    datas = [read_upload(p) for p in uploads]
    out = np.empty((len(datas), size, size, 3), dtype=np.uint8)
    for i, data in enumerate(datas):
        try:
            out[i] = load(data, size)
        except ImageError as exc:
            raise BadRequest(f"image #{i}: {exc}" if len(datas) > 1 else str(exc)) from None
    return out, datas


def check_token(headers, expected: str | None) -> None:
    """Admin endpoints need ``Authorization: Bearer <token>``; without a configured token they are off."""
    if not expected:
        raise Forbidden("admin endpoints are disabled: the server has no BYOL_ADMIN_TOKEN")
    scheme, _, given = (headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise Unauthorized("missing or wrong bearer token")


def check_k(k: int) -> int:
    if not 1 <= k <= MAX_K:
        raise BadRequest(f"k must be between 1 and {MAX_K}, got {k}")
    return k


def hits_json(hits) -> list[dict]:
    return [{"id": int(h.id), "score": float(h.score), "metadata": h.metadata} for h in hits]


def proba_json(classes, proba: np.ndarray) -> dict:
    """One row of probabilities → ``{"label", "probabilities": {class: p}}``."""
    best = int(np.argmax(proba))
    return {"label": str(classes[best]),
            "probabilities": {str(c): float(p) for c, p in zip(classes, proba, strict=True)}}
