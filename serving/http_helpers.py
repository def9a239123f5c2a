"""Torch-free helpers behind the HTTP endpoints: upload → pixels, token check, results → JSON.

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


def add_to_index(index, version: str, vectors: np.ndarray, datas: list[bytes], labels: list[str] | None) -> np.ndarray:
    """Keep the image bytes in the collection (so a new encoder can re-index them), then add the vectors.

    Order matters for crashes: the bytes are stored first, the index's log is fsynced last, so every
    acknowledged id can be rebuilt; a crash in between leaves an unindexed collection item, never the reverse.
    """
    from serving import collection

    labels = labels if labels is not None else [None] * len(datas)
    uris = [collection.store_image_bytes(data) for data in datas]
    collection.add_items([{"uri": u, "label": lab} for u, lab in zip(uris, labels, strict=True)])
    metadata = [{"uri": u, "label": lab} for u, lab in zip(uris, labels, strict=True)]
    return index.add(vectors, metadata, version)


def remove_from_index(index, ids: list[int]) -> int:
    """Remove from the index and record the removal in the collection, so a rebuild for a new encoder version
    does not bring the items back."""
    from serving import collection

    uris = [m["uri"] for m in (index.metadata(int(i)) for i in ids) if m and m.get("uri")]
    removed = index.remove(ids)
    collection.remove_items(uris)
    return removed


def sync_with_collection(index, encoder, version: str, batch: int = 256) -> dict:
    """Bring a version's index in line with the collection before it is swapped in.

    Why: a new version's index is rebuilt from the collection (``byol index build --collection``) while the old
    version keeps serving; images added or removed over HTTP in between would otherwise vanish or come back at
    the swap. The service runs this under the same lock as /index/add and /index/remove, so nothing slips
    between the sync and the swap.
    """
    from serving import collection

    wanted = {it.uri: it for it in collection.iter_items()}
    present = index.items()
    have = {m.get("uri") for _, m in present}
    stale = [i for i, m in present if m.get("uri") not in wanted]
    missing = [it for uri, it in wanted.items() if uri not in have]
    added = 0
    for lo in range(0, len(missing), batch):
        chunk, pixels = [], []
        for it in missing[lo:lo + batch]:
            try:
                pixels.append(collection.load_image(it.uri, encoder.input_size))
                chunk.append(it)
            except (ValueError, OSError):  # an item that cannot be read any more is skipped, as a rebuild does
                continue
        if chunk:
            index.add(encoder.embed(np.stack(pixels)), [{"uri": it.uri, "label": it.label} for it in chunk], version)
            added += len(chunk)
    removed = index.remove(stale) if stale else 0
    return {"added": added, "removed": removed}
