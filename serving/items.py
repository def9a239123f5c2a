"""Indexed items by id: their thumbnails (``GET /items/{id}/thumbnail``) and their neighbours (``POST /search_by_id``).

Only ids ever come in, never a path: an id is looked up in the served version's index, and its image is read through
the item's URI (``serving.contract.sources.read_uri_bytes``: dataset items, uploads kept in the collection, files
under a registered folder root). An id the index does not hold — unknown, removed, or from another version's index
(ids are per version) — is a 404, and so is an indexed item whose image can no longer be read.

Both run where the index is (the index service, :mod:`serving.served`): the metadata, the stored vector and the
image bytes are read there; the thumbnail is rendered and cached by the embedding worker that got the request.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import numpy as np
from anyio import to_thread

from serving import http_helpers as h
from serving.contract.image import ImageError, decode
from serving.contract.sources import read_uri_bytes
from serving.errors import BadRequest, NotFoundError

THUMBNAIL_SIDE = 128  # longest side of a thumbnail (never enlarged; the page scales small ones up)
CACHE_ITEMS = 2048  # thumbnails kept in memory (a few KB each): a grid asks for the same ones again and again


def parse_id(text: str) -> int:
    """A path segment → an item id, or a 400 naming what is wrong with it."""
    if not text.isascii() or not text.isdigit() or int(text) > h.MAX_ID:
        raise BadRequest(f"item id must be an integer from 0 to {h.MAX_ID}, got {text[:40]!r}")
    return int(text)


def check_id(item_id: int) -> int:
    if not 0 <= item_id <= h.MAX_ID:
        raise BadRequest(f"item id must be an integer from 0 to {h.MAX_ID}, got {item_id}")
    return item_id


def metadata_of(hd, item_id: int) -> dict:
    """The item's metadata in the served index (409 without an index, 404 for an id it does not hold)."""
    meta = hd.require_index().metadata(check_id(item_id))
    if meta is None:
        raise NotFoundError(f"no item {item_id} in the index of version {hd.version}: unknown or removed id (ids "
                            "belong to one version's index; search again for current ids)")
    return meta


def read_image(item_id: int, meta: dict, collection) -> bytes:
    """The item's encoded image (blocking: run it in a thread). Errors name the item and its URI, never a path."""
    uri = meta.get("uri")
    if not uri:
        raise NotFoundError(f"item {item_id} has no image URI in the index")
    try:
        return read_uri_bytes(uri, collection)
    except ValueError as exc:  # CollectionError / SourceError: they name the URI only
        raise NotFoundError(f"the image of item {item_id} cannot be read: {exc}") from None
    except OSError as exc:
        raise NotFoundError(f"the image of item {item_id} ({uri}) cannot be read: {exc.strerror or 'I/O error'}"
                            ) from None


def thumbnail_png(data: bytes, side: int = THUMBNAIL_SIDE) -> bytes:
    """Image bytes → a PNG at most ``side`` pixels a side, aspect kept (decoded by the image contract)."""
    img = decode(data)
    img.thumbnail((side, side))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


class ThumbnailCache:
    """Least-recently used PNGs by (version, id, uri): a rebuilt index may give an id to another image."""

    def __init__(self, size: int = CACHE_ITEMS) -> None:
        self.size = size
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            png = self._items.get(key)
            if png is not None:
                self._items.move_to_end(key)
            return png

    def put(self, key: str, png: bytes) -> None:
        with self._lock:
            self._items[key] = png
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


CACHE = ThumbnailCache()


def etag(version: str, item_id: int, meta: dict) -> str:
    """What a thumbnail depends on: the version, the id and the item's image URI."""
    return hashlib.sha256(f"{version}|{item_id}|{meta.get('uri')}".encode()).hexdigest()[:20]


def _render(item_id: int, data: bytes) -> bytes:
    try:
        return thumbnail_png(data)
    except ImageError as exc:
        raise NotFoundError(f"the image of item {item_id} cannot be decoded: {exc}") from None


async def thumbnail(item: dict, image: Callable[[int], Awaitable[bytes]]) -> bytes:
    """The PNG of an indexed item (``item``: the index service's ``{"id", "etag", ...}``; ``image``: fetches its
    encoded bytes from the index service, called only when the cache misses); decoding runs in the decode pool of
    the embedding worker."""
    png = CACHE.get(item["etag"])
    if png is None:
        data = await image(item["id"])
        png = await to_thread.run_sync(_render, item["id"], data, limiter=h.decoders())
        CACHE.put(item["etag"], png)
    return png


async def neighbours(hd, item_id: int, k: int) -> dict:
    """``POST /search_by_id``: the ``k`` nearest items to item ``item_id`` (by the vector the served index holds for
    it), best first, the item itself left out → ``{"version", "id", "metadata", "results": [...]}``. ``hd``: the
    index service's :class:`serving.holdings.Holdings`."""
    h.check_k(k)
    meta = metadata_of(hd, item_id)
    # the vector the index holds: no decoding, and it works for items whose image is not on this server (an index
    # built from embeddings files); unit rows again, as PQ indexes hold approximations
    vec = await to_thread.run_sync(hd.index.vectors, [item_id])
    vec = vec / np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12)
    hits = (await to_thread.run_sync(hd.search, vec, k + 1, "search_by_id"))[0]
    return {"version": hd.version, "id": item_id, "metadata": meta,
            "results": h.hits_json([hit for hit in hits if int(hit.id) != item_id][:k])}
