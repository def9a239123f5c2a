"""HTTP client of the byol-embed API, sync and async. Imports nothing of ours (a serving client needs only this file,
httpx and numpy).

Every method raises :class:`ClientError` (``.status``, ``.message``, ``.url``) when the server answers 4xx/5xx, and
the same class with ``status=None`` when it cannot be reached or times out, so callers handle one exception type.
Images are given as a path or as the file's bytes; they are uploaded as multipart files. ``embed_batch`` asks for
the compact answer (``Accept: application/x-npy``: the float32 ``[N, D]`` array as ``.npy`` bytes, the version in
the ``x-byol-version`` header; ~5x smaller and far cheaper for the server to write than JSON floats) and still
reads JSON from a server that answers only JSON.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import httpx
import numpy as np

ImageLike = str | os.PathLike | bytes
NPY = "application/x-npy"  # the compact answer of /embed_batch
VERSION_HEADER = "x-byol-version"


class ClientError(RuntimeError):
    """The request failed: ``status`` is the HTTP status (``None`` when no answer came), ``message`` the reason."""

    def __init__(self, message: str, status: int | None, url: str) -> None:
        super().__init__(f"{url}: {status or 'no answer'}: {message}")
        self.message, self.status, self.url = message, status, url


def _part(image: ImageLike, i: int = 0) -> tuple[str, bytes]:
    if isinstance(image, bytes | bytearray):
        return f"image{i}", bytes(image)
    path = Path(image)
    try:
        return path.name, path.read_bytes()
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc.strerror or exc}", None, str(path)) from None


def _message(resp: httpx.Response) -> str:
    """BentoML answers ``[{"error": m}]``, ``{"error": m, "detail": [...]}`` or plain text; keep what explains it."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text.strip()[:500] or resp.reason_phrase
    if isinstance(body, list) and body and isinstance(body[0], dict):
        body = body[0]
    if not isinstance(body, dict):
        return str(body)[:500]
    msg = str(body.get("error", body))
    details = [f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in body.get("detail") or []
               if isinstance(d, dict)]
    return f"{msg} ({'; '.join(details)})" if details else msg


def _check(resp: httpx.Response) -> httpx.Response:
    if resp.status_code >= 400:
        raise ClientError(_message(resp), resp.status_code, str(resp.request.url))
    return resp


class _Base:
    def __init__(self, url: str = "http://127.0.0.1:3000", timeout: float = 30.0, token: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.token = token
        self.version: str | None = None  # bundle version that answered the last request

    def _headers(self, admin: bool) -> dict:
        if not admin:
            return {}
        if not self.token:
            raise ClientError("this call needs the admin token (token=... or BYOL_ADMIN_TOKEN)", None, self.url)
        return {"Authorization": f"Bearer {self.token}"}

    def _seen(self, body: dict) -> dict:
        self.version = body.get("version", self.version)
        return body

    def _vectors(self, resp: httpx.Response, n: int) -> np.ndarray:
        """``/embed_batch``'s answer → float32 ``[n, D]``: the ``.npy`` body asked for, or JSON from a server that
        answers only JSON (``{"version", "dim", "embeddings": [[D floats], ...]}``)."""
        url = str(resp.request.url)
        if resp.headers.get("content-type", "").split(";")[0].strip() == NPY:
            try:
                vectors = np.load(io.BytesIO(resp.content), allow_pickle=False)
            except (ValueError, OSError, EOFError) as exc:
                raise ClientError(f"unreadable .npy answer: {exc}", resp.status_code, url) from None
            self.version = resp.headers.get(VERSION_HEADER, self.version)
        else:
            vectors = np.asarray(self._seen(resp.json())["embeddings"], dtype=np.float32).reshape(n, -1)
        if vectors.ndim != 2 or len(vectors) != n:
            raise ClientError(f"expected {n} embeddings, got an array of shape {list(vectors.shape)}",
                              resp.status_code, url)
        return vectors.astype(np.float32, copy=False)

    def _removal(self, ids, version, uris) -> dict:
        body: dict = {}
        if ids:
            body["ids"] = [int(i) for i in ids]
            body["version"] = version or self.version
            if not body["version"]:
                raise ClientError("removing by id needs the version the ids came from (version=...), or remove by "
                                  "uris", None, self.url)
        if uris:
            body["uris"] = [str(u) for u in uris]
        return body

    @staticmethod
    def _files(field: str, images) -> list:
        return [(field, _part(im, i)) for i, im in enumerate(images)]

    @staticmethod
    def _thumbnail_path(item_id: int) -> str:
        return f"/items/{int(item_id)}/thumbnail"


class EmbeddingClient(_Base):
    """Blocking client. Use as a context manager (or call :meth:`close`) to release its connection pool."""

    def __init__(self, url: str = "http://127.0.0.1:3000", timeout: float = 30.0, token: str | None = None) -> None:
        super().__init__(url, timeout, token)
        self._http = httpx.Client(base_url=self.url, timeout=timeout)

    def __enter__(self) -> EmbeddingClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, admin: bool = False, headers: dict | None = None,
              **kw) -> httpx.Response:
        headers = {**self._headers(admin), **(headers or {})}
        try:
            resp = self._http.request(method, path, headers=headers, **kw)
        except httpx.TimeoutException:
            raise ClientError(f"timed out after {self.timeout} s", None, self.url + path) from None
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach the server: {exc}", None, self.url + path) from None
        return _check(resp)

    def _call(self, method: str, path: str, admin: bool = False, **kw) -> dict:
        return self._seen(self._send(method, path, admin, **kw).json())

    def embed(self, image: ImageLike) -> np.ndarray:
        """One image → float32 ``[D]`` (server answers ``{"version", "dim", "embedding": [D]}``)."""
        body = self._call("POST", "/embed", files=self._files("image", [image]))
        return np.asarray(body["embedding"], dtype=np.float32)

    def embed_batch(self, images: list[ImageLike]) -> np.ndarray:
        """Several images (at most 256 a call) → float32 ``[N, D]``, unit rows, in upload order; :attr:`version`
        names the encoder that made them. Sent with ``Accept: application/x-npy``: the server answers the ``[N, D]``
        array as ``.npy`` bytes (version and dim in the ``x-byol-version`` / ``x-byol-dim`` headers) instead of JSON
        ``{"version", "dim", "embeddings": [[D floats], ...]}``."""
        resp = self._send("POST", "/embed_batch", files=self._files("images", images), headers={"Accept": NPY})
        return self._vectors(resp, len(images))

    def search(self, image: ImageLike, k: int = 10) -> list[dict]:
        """Neighbours, best first: ``[{"id": int, "score": float (cosine), "metadata": {"uri", "label", ...}}]``."""
        return self._call("POST", "/search", files=self._files("image", [image]), data={"k": str(k)})["results"]

    def search_batch(self, images: list[ImageLike], k: int = 10) -> list[list[dict]]:
        """Neighbours of each image, in upload order: one list per image, each like :meth:`search`'s (server answers
        ``{"version", "results": [[{"id", "score", "metadata"}], ...]}``; limits as :meth:`embed_batch`)."""
        body = self._call("POST", "/search_batch", files=self._files("images", images), data={"k": str(k)})
        return body["results"]

    def search_by_id(self, item_id: int, k: int = 10) -> list[dict]:
        """Neighbours of indexed item ``item_id`` of the served version, the item itself left out, best first:
        ``[{"id", "score", "metadata"}]`` (server answers ``{"version", "id", "metadata": the item's, "results"}``).
        Ids belong to one version's index: :attr:`version` says which answered. Unknown or removed id → 404."""
        return self._call("POST", "/search_by_id", json={"id": int(item_id), "k": int(k)})["results"]

    def thumbnail(self, item_id: int) -> bytes:
        """PNG bytes of indexed item ``item_id`` of the served version, at most 128 px a side (the aspect kept,
        never enlarged). Unknown or removed id → :class:`ClientError` with status 404; no index → 409."""
        return self._send("GET", self._thumbnail_path(item_id)).content

    def classify(self, image: ImageLike, method: str = "probe") -> dict:
        """``{"version", "method", "label": str, "probabilities": {class: float}}``; method ``probe`` or ``knn``."""
        return self._call("POST", "/classify", files=self._files("image", [image]), data={"method": method})

    def info(self) -> dict:
        """``{"version", "dim", "input_size", "index": {"version", "size", "factory"} | None, "classes", ...}``."""
        return self._call("GET", "/info")

    def add(self, images: list[ImageLike], labels: list[str] | None = None) -> list[int]:
        """(admin) Store and index images → their ids (durable once returned; ids of the version in
        :attr:`version`). Idempotent: an image already indexed (same bytes) gets its existing id back, so retrying
        after a timeout or a 503 never adds it twice."""
        data = {"labels": json.dumps(labels)} if labels is not None else None
        return self._call("POST", "/index/add", admin=True, files=self._files("images", images), data=data)["ids"]

    def remove(self, ids: list[int] | None = None, version: str | None = None, uris: list[str] | None = None) -> int:
        """(admin) Remove items → how many were removed. Ids belong to one version's index: ``version`` defaults to
        the version of this client's last answer (the server answers 409 when it serves another one now, since ids
        differ between versions). ``uris`` (``sha256:<hex of the image bytes>`` for uploads) are stable across
        versions and need no version."""
        return self._call("POST", "/index/remove", admin=True, json=self._removal(ids, version, uris))["removed"]

    def reload(self, version: str | None = None) -> dict:
        """(admin) Serve ``version`` (default: the promoted one) → ``{"version", "previous"}``."""
        return self._call("POST", "/admin/reload", admin=True, json={"version": version or ""})

    def ready(self) -> bool:
        """True when ``/readyz`` answers 200 (the model is loaded)."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False


class AsyncEmbeddingClient(_Base):
    """The same API for asyncio code (``await client.embed(...)``); use ``async with`` or ``await close()``."""

    def __init__(self, url: str = "http://127.0.0.1:3000", timeout: float = 30.0, token: str | None = None,
                 max_connections: int = 100) -> None:
        super().__init__(url, timeout, token)
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout,
                                       limits=httpx.Limits(max_connections=max_connections))

    async def __aenter__(self) -> AsyncEmbeddingClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _send(self, method: str, path: str, admin: bool = False, headers: dict | None = None,
                    **kw) -> httpx.Response:
        headers = {**self._headers(admin), **(headers or {})}
        try:
            resp = await self._http.request(method, path, headers=headers, **kw)
        except httpx.TimeoutException:
            raise ClientError(f"timed out after {self.timeout} s", None, self.url + path) from None
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach the server: {exc}", None, self.url + path) from None
        return _check(resp)

    async def _call(self, method: str, path: str, admin: bool = False, **kw) -> dict:
        return self._seen((await self._send(method, path, admin, **kw)).json())

    async def embed(self, image: ImageLike) -> np.ndarray:
        """See :meth:`EmbeddingClient.embed`."""
        body = await self._call("POST", "/embed", files=self._files("image", [image]))
        return np.asarray(body["embedding"], dtype=np.float32)

    async def embed_batch(self, images: list[ImageLike]) -> np.ndarray:
        """See :meth:`EmbeddingClient.embed_batch`: float32 ``[N, D]`` in upload order, sent and answered as
        ``.npy`` (``Accept: application/x-npy``)."""
        resp = await self._send("POST", "/embed_batch", files=self._files("images", images), headers={"Accept": NPY})
        return self._vectors(resp, len(images))

    async def search(self, image: ImageLike, k: int = 10) -> list[dict]:
        """See :meth:`EmbeddingClient.search`."""
        body = await self._call("POST", "/search", files=self._files("image", [image]), data={"k": str(k)})
        return body["results"]

    async def search_batch(self, images: list[ImageLike], k: int = 10) -> list[list[dict]]:
        """See :meth:`EmbeddingClient.search_batch`: one neighbour list per image, in order."""
        body = await self._call("POST", "/search_batch", files=self._files("images", images), data={"k": str(k)})
        return body["results"]

    async def search_by_id(self, item_id: int, k: int = 10) -> list[dict]:
        """See :meth:`EmbeddingClient.search_by_id`: ``[{"id", "score", "metadata"}]``, the item left out."""
        body = await self._call("POST", "/search_by_id", json={"id": int(item_id), "k": int(k)})
        return body["results"]

    async def thumbnail(self, item_id: int) -> bytes:
        """See :meth:`EmbeddingClient.thumbnail`: PNG bytes, at most 128 px a side."""
        return (await self._send("GET", self._thumbnail_path(item_id))).content

    async def classify(self, image: ImageLike, method: str = "probe") -> dict:
        """See :meth:`EmbeddingClient.classify`."""
        return await self._call("POST", "/classify", files=self._files("image", [image]), data={"method": method})

    async def info(self) -> dict:
        """See :meth:`EmbeddingClient.info`."""
        return await self._call("GET", "/info")

    async def add(self, images: list[ImageLike], labels: list[str] | None = None) -> list[int]:
        """See :meth:`EmbeddingClient.add`."""
        data = {"labels": json.dumps(labels)} if labels is not None else None
        body = await self._call("POST", "/index/add", admin=True, files=self._files("images", images), data=data)
        return body["ids"]

    async def remove(self, ids: list[int] | None = None, version: str | None = None,
                     uris: list[str] | None = None) -> int:
        """See :meth:`EmbeddingClient.remove`."""
        body = await self._call("POST", "/index/remove", admin=True, json=self._removal(ids, version, uris))
        return body["removed"]

    async def reload(self, version: str | None = None) -> dict:
        """See :meth:`EmbeddingClient.reload`."""
        return await self._call("POST", "/admin/reload", admin=True, json={"version": version or ""})
