"""Torch-free helpers behind the HTTP endpoints: upload → pixels, token check, parameters, results → JSON.

Index and collection writes are not here: they go through ``index.writes`` (driven by :mod:`serving.served`).

Kept apart from ``service.py`` so the service stays a list of thin endpoints, and so each rule (what a bad upload
answers, how the token is compared, how much decoding one request may cost) lives in one place.
"""

from __future__ import annotations

import hmac
import io
import json
from pathlib import Path

import numpy as np
from anyio import CapacityLimiter, to_thread

from serving import decode_memory
from serving.contract.image import ImageError, decode_cost, load_opened, open_image
from serving.errors import BadRequest, Forbidden, TooLarge, Unauthorized
from serving.limits import Limits
from serving.multipart import SCOPE_KEY

LIMITS = Limits.from_env()
MAX_IMAGES = LIMITS.max_images  # images per request to /embed_batch and /index/add
MAX_K = 1000  # neighbours per /search
MAX_ID = 2**63 - 1
_DECODERS: list[CapacityLimiter] = []
NPY = "application/x-npy"  # Accept: → the embeddings as one float32 [N, D] .npy array (``embeddings_response``)
VERSION_HEADER, DIM_HEADER = "x-byol-version", "x-byol-dim"
# Decoding this little (PNG or JPEG, header-checked) runs on the event loop: ~50 us for a 28-px image, about what a
# hop to a decode thread and back costs the loop. Anything larger, or of another format, decodes in the pool.
INLINE_BYTES = 16 * 2**10
INLINE_PIXELS = 64 * 64
JSON_INLINE_FLOATS = 4096  # a larger JSON answer is written in a thread (64 x 256 floats: ~5 ms of float repr)


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


def check_count(n: int) -> None:
    if not n:
        raise BadRequest("no images in the request: send one or more files in the 'images' field")
    if n > LIMITS.max_images:
        raise TooLarge(f"too many images in one request: {n} (limit {LIMITS.max_images})")


def read_uploads(uploads: list[Path]) -> list[bytes]:
    check_count(len(uploads))
    return [read_upload(p) for p in uploads]


async def read_uploads_async(uploads: list[Path]) -> list[bytes]:
    """:func:`read_uploads` off the event loop."""
    return await to_thread.run_sync(read_uploads, uploads)


def edge_uploads(ctx, field: str) -> list[bytes] | None:
    """The bytes the edge parsed for file ``field`` (:mod:`serving.multipart`: BentoML then wrote no temp file), or
    ``None`` when the request did not come through the edge's parse (read the ``Path`` uploads instead)."""
    request = getattr(ctx, "request", None)
    parsed = None if request is None else request.scope.get(SCOPE_KEY)
    if parsed is None or field not in parsed.files:
        return None
    check_count(len(parsed.files[field]))
    return parsed.files[field]


def _named(i: int, n: int, exc: ImageError) -> str:
    return f"image #{i}: {exc}" if n > 1 else str(exc)


def opened(datas: list[bytes]) -> tuple[list, int]:
    """Every upload identified and size-checked from its header (no pixel decoded) → the opened images and their
    pixels together; the request is refused (413) when they would decode more than ``BYOL_MAX_REQUEST_PIXELS``
    (checked as each opens: an icon decodes its frame while opening)."""
    images, total = [], 0
    for i, data in enumerate(datas):
        try:
            images.append(open_image(data))
        except ImageError as exc:
            _close(images)
            raise BadRequest(_named(i, len(datas), exc)) from None
        total += images[-1].size[0] * images[-1].size[1]
        if total > LIMITS.max_request_pixels:
            _close(images)
            raise TooLarge(f"request pixel budget exceeded: the images hold {total} pixels together (limit "
                           f"{LIMITS.max_request_pixels}, BYOL_MAX_REQUEST_PIXELS); send fewer or smaller images")
    return images, total


def _close(images: list) -> None:
    for img in images:
        img.close()


def decode_bytes(images: list, size: int) -> int:
    """Bytes the request's decode holds at its peak: the images decode one after another and each is freed before
    the next (:func:`decode_opened`), so the largest one's :func:`~serving.contract.image.decode_cost`, plus what
    is held from the start (icons decoded while opening) and the output array."""
    held = sum(4 * img.size[0] * img.size[1] for img in images if img.format in ("ICO", "CUR"))
    return max((decode_cost(img, size) for img in images), default=0) + held + len(images) * size * size * 3


def decode_opened(images: list, size: int) -> np.ndarray:
    """:func:`opened` images → ``uint8 [N, size, size, 3]`` (the image contract's ``load``), each image's pixels
    freed as soon as it is done (:func:`decode_bytes` counts one image at a time)."""
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    try:
        for i, img in enumerate(images):
            try:
                out[i] = load_opened(img, size)
            except ImageError as exc:
                raise BadRequest(_named(i, len(images), exc)) from None
            finally:
                img.close()
    finally:
        _close(images)
    return out


def pixels(datas: list[bytes], size: int) -> np.ndarray:
    """Upload bytes → ``uint8 [N, size, size, 3]``: sizes from the headers and the request's pixel budget first
    (:func:`opened`), then the decode memory (:func:`decode_bytes`, held in this thread: a wait of at most
    ``BYOL_DECODE_WAIT_MS`` here, 413/503 as in the server), then the pixels. For callers outside the event loop."""
    images, _ = opened(datas)
    try:
        nbytes = decode_bytes(images, size)
        with decode_memory.shared(LIMITS).hold(nbytes):
            return decode_opened(images, size)
    finally:
        _close(images)


async def decode_async(uploads: list[Path], size: int, ctx=None, field: str = "") -> tuple[np.ndarray, list[bytes]]:
    """The request's images → ``uint8 [N, size, size, 3]`` and their bytes: the edge's parse when there is one
    (:func:`edge_uploads`), else the ``Path`` uploads read off the loop; decoded by :func:`pixels_async`."""
    datas = edge_uploads(ctx, field) if field else None
    if datas is None:
        datas = await read_uploads_async(uploads)
    return await pixels_async(datas, size), datas


def _headers_cheap(datas: list[bytes]) -> bool:
    """Small PNG or JPEG uploads: opening them reads headers only (an icon decodes a frame inside ``open``)."""
    return sum(map(len, datas)) <= INLINE_BYTES and all(
        d[:8] == b"\x89PNG\r\n\x1a\n" or d[:3] == b"\xff\xd8\xff" for d in datas)


def _open_and_try(datas: list[bytes], size: int) -> tuple[list, int, np.ndarray | None]:
    """In a decode thread: open the images and, when the decode memory is free right now, decode them at once (no
    second hop) → ``(images, bytes, pixels or None)``."""
    images, _ = opened(datas)
    try:
        nbytes = decode_bytes(images, size)
        budget = decode_memory.shared(LIMITS)
        if not budget.try_take(nbytes):
            return images, nbytes, None
    except BaseException:
        _close(images)
        raise
    try:
        return images, nbytes, decode_opened(images, size)
    finally:
        budget.give(nbytes)


async def pixels_async(datas: list[bytes], size: int) -> np.ndarray:
    """:func:`pixels` on the server: the request's decode memory (:func:`decode_bytes`) reserved from the worker's
    budget (:mod:`serving.decode_memory`) before any pixel is decoded — 413 when it is over the whole budget, 503
    after waiting ``BYOL_DECODE_WAIT_MS`` for it — and given back when the pixels are done. Tiny images
    (:data:`INLINE_PIXELS`) decode on the event loop, everything else in the decode pool."""
    cheap = _headers_cheap(datas)
    if cheap:
        images, total = opened(datas)
        out = None
    else:
        images, nbytes, out = await to_thread.run_sync(_open_and_try, datas, size, limiter=decoders())
    try:
        if out is not None:
            return out
        if cheap:
            if total <= INLINE_PIXELS:  # on the loop, one request at a time: at most INLINE_PIXELS x 16 bytes
                return decode_opened(images, size)  # (64 KiB) beside the budget, which bounds the pool's decodes
            nbytes = decode_bytes(images, size)
        async with decode_memory.shared(LIMITS).reserve(nbytes):
            return await to_thread.run_sync(decode_opened, images, size, limiter=decoders())
    finally:
        _close(images)


def json_bytes(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def json_response(obj: dict, headers: dict | None = None):
    """A finished JSON answer: returned as is by BentoML, which would otherwise validate the dict against a JSON
    schema it builds anew for every response (measured: ~6 % of a single-image request's CPU)."""
    from starlette.responses import Response

    return Response(json_bytes(obj), media_type="application/json", headers=headers)


def _embeddings_json(version: str, vectors: np.ndarray) -> bytes:
    return json_bytes({"version": version, "dim": int(vectors.shape[1]), "embeddings": vectors.tolist()})


def wants_npy(ctx) -> bool:
    request = getattr(ctx, "request", None)
    return request is not None and NPY in (request.headers.get("accept") or "")


def npy_bytes(vectors: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(vectors, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


async def embeddings_response(vectors: np.ndarray, version: str, ctx):
    """``/embed_batch``'s answer: ``Accept: application/x-npy`` → the float32 ``[N, D]`` array as ``.npy`` bytes with
    the version and dim in ``x-byol-version`` / ``x-byol-dim`` headers (64 x 256 floats: 65 KB written in ~10 us,
    vs ~330 KB and ~5 ms of JSON); else JSON ``{"version", "dim", "embeddings": [[D floats], ...]}``."""
    from starlette.responses import Response

    headers = {VERSION_HEADER: version, DIM_HEADER: str(int(vectors.shape[1]))}
    if wants_npy(ctx):
        return Response(npy_bytes(vectors), media_type=NPY, headers=headers)
    if vectors.size <= JSON_INLINE_FLOATS:
        body = _embeddings_json(version, vectors)
    else:  # ~5 ms of float repr for 64 x 256: not on the event loop
        body = await to_thread.run_sync(_embeddings_json, version, vectors)
    return Response(body, media_type="application/json", headers=headers)


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

