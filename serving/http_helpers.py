"""Torch-free helpers behind the HTTP endpoints: upload → pixels, token check, parameters, results → JSON.

Index and collection writes are not here: they go through ``index.writes`` (driven by :mod:`serving.served`).

Kept apart from ``service.py`` so the service stays a list of thin endpoints, and so each rule (what a bad upload
answers, how the token is compared, how much decoding one request may cost) lives in one place.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

import numpy as np
from anyio import CapacityLimiter, to_thread

from serving.contract.image import ImageError, image_size, load
from serving.errors import BadRequest, Forbidden, TooLarge, Unauthorized
from serving.limits import Limits

LIMITS = Limits.from_env()
MAX_IMAGES = LIMITS.max_images  # images per request to /embed_batch and /index/add
MAX_K = 1000  # neighbours per /search
MAX_ID = 2**63 - 1
_DECODERS: list[CapacityLimiter] = []


def decoders() -> CapacityLimiter:
    """The decode pool's bound (``BYOL_DECODE_THREADS``, one per CPU by default): more decoding threads than cores
    only slows every request down."""
    if not _DECODERS:
        _DECODERS.append(CapacityLimiter(LIMITS.threads))
    return _DECODERS[0]


def read_upload(path: Path) -> bytes:
    """The bytes BentoML wrote for one uploaded file (it spools every upload to a per-request temp file)."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise BadRequest(f"cannot read the upload: {exc}") from None


def read_uploads(uploads: list[Path]) -> list[bytes]:
    if not uploads:
        raise BadRequest("no images in the request: send one or more files in the 'images' field")
    if len(uploads) > LIMITS.max_images:
        raise TooLarge(f"too many images in one request: {len(uploads)} (limit {LIMITS.max_images})")
    return [read_upload(p) for p in uploads]


def _named(i: int, n: int, exc: ImageError) -> str:
    return f"image #{i}: {exc}" if n > 1 else str(exc)


def pixels(datas: list[bytes], size: int) -> np.ndarray:
    """Upload bytes → ``uint8 [N, size, size, 3]``. Every image's size is read from its header first, and the
    request is refused (413) when all of them together would decode more than ``BYOL_MAX_REQUEST_PIXELS``."""
    total = 0
    for i, data in enumerate(datas):
        try:
            w, h = image_size(data)
        except ImageError as exc:
            raise BadRequest(_named(i, len(datas), exc)) from None
        total += w * h
    if total > LIMITS.max_request_pixels:
        raise TooLarge(f"request pixel budget exceeded: the images hold {total} pixels together (limit "
                       f"{LIMITS.max_request_pixels}, BYOL_MAX_REQUEST_PIXELS); send fewer or smaller images")
    out = np.empty((len(datas), size, size, 3), dtype=np.uint8)
    for i, data in enumerate(datas):
        try:
            out[i] = load(data, size)
        except ImageError as exc:
            raise BadRequest(_named(i, len(datas), exc)) from None
    return out


def decode_uploads(uploads: list[Path], size: int) -> tuple[np.ndarray, list[bytes]]:
    """Uploads → ``uint8 [N, size, size, 3]`` and their raw bytes; a bad one → 400 naming it by position."""
    datas = read_uploads(uploads)
    return pixels(datas, size), datas


async def decode_async(uploads: list[Path], size: int) -> tuple[np.ndarray, list[bytes]]:
    """:func:`decode_uploads` in the decode pool (never on the event loop)."""
    return await to_thread.run_sync(decode_uploads, uploads, size, limiter=decoders())


async def pixels_async(datas: list[bytes], size: int) -> np.ndarray:
    return await to_thread.run_sync(pixels, datas, size, limiter=decoders())


def check_token(headers, expected: str | None) -> None:
    """Admin endpoints need ``Authorization: Bearer <token>``; without a configured token they are off. (The edge,
    :mod:`serving.upload_guard`, checks first, before reading the body; this is the second line.)"""
    if not expected:
        raise Forbidden("admin endpoints are disabled: the server has no BYOL_ADMIN_TOKEN")
    scheme, _, given = (headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise Unauthorized("missing or wrong bearer token")


def check_k(k: int) -> int:
    if not 1 <= k <= MAX_K:
        raise BadRequest(f"k must be between 1 and {MAX_K}, got {k}")
    return k


def check_labels(labels: list[str] | None, n: int) -> None:
    if labels is None:
        return
    if len(labels) != n:
        raise BadRequest(f"{len(labels)} labels for {n} images: give one label per image or none")
    long = [i for i, lab in enumerate(labels) if len(lab) > LIMITS.max_label_chars]
    if long:
        raise BadRequest(f"label #{long[0]} is longer than {LIMITS.max_label_chars} characters")


def check_removal(ids: list[int], uris: list[str], version: str) -> None:
    """``/index/remove``: ids need the version they came from (ids are per version); uris are stable keys."""
    if not ids and not uris:
        raise BadRequest("nothing to remove: give 'ids' (with 'version') or 'uris'")
    if len(ids) + len(uris) > LIMITS.max_remove:
        raise TooLarge(f"too many items to remove in one request: {len(ids) + len(uris)} (limit "
                       f"{LIMITS.max_remove})")
    bad = [i for i in ids if not 0 <= i <= MAX_ID]
    if bad:
        raise BadRequest(f"id {bad[0]} is out of range: ids are integers from 0 to {MAX_ID}")
    if ids and not version:
        raise BadRequest("'version' is required with 'ids': ids belong to one version's index; send the "
                         "'version' of the response that gave them (or remove by 'uris', stable across versions)")


def hits_json(hits) -> list[dict]:
    return [{"id": int(h.id), "score": float(h.score), "metadata": h.metadata} for h in hits]


def proba_json(classes, proba: np.ndarray) -> dict:
    """One row of probabilities → ``{"label", "probabilities": {class: p}}``."""
    best = int(np.argmax(proba))
    return {"label": str(classes[best]),
            "probabilities": {str(c): float(p) for c, p in zip(classes, proba, strict=True)}}


def env_token() -> str | None:
    return os.environ.get("BYOL_ADMIN_TOKEN") or None
