"""The byol-embed HTTP API: one BentoML service over the loaded :class:`serving.runtime.Runtime`.

Start: ``byol serve`` (or ``bentoml serve serving.service:ByolEmbed``). Which bundle: ``$BYOL_MODEL_TAG``, else the
promoted version in ``$BYOL_HOME/release.json``, else the newest in the model store. Admin endpoints need
``Authorization: Bearer $BYOL_ADMIN_TOKEN``. Uploads are typed ``Path`` and decoded by ``serving.contract.image`` (a
``PIL.Image`` parameter would turn a non-image into a 500 in BentoML 1.4.39).

Batching: every embedding goes through the loaded version's :class:`serving.batching.MicroBatcher` —
``MAX_BATCH_SIZE`` = 64 images per ONNX Runtime call, ``MAX_WAIT_MS`` = 2 ms longest wait for company; ``/embed``
requests from concurrent clients share model calls. At most ``MAX_IMAGES`` (256, ``$BYOL_MAX_IMAGES``) images per
request (more → 413).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Annotated, Literal

import bentoml
from anyio import to_thread
from bentoml.exceptions import BentoMLException
from pydantic import Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from index import writes
from index.collection import Collection
from index.vector_index import set_omp_threads
from serving import http_helpers as h
from serving import paths
from serving.contract.bundle import MODEL_NAME, BundleError
from serving.errors import BadRequest, Conflict, NotFoundError
from serving.release import ReleaseError, served_tag
from serving.runtime import Runtime, check_bundle, load_runtime, resolve_tag
from serving.upload_guard import UploadGuard

log = logging.getLogger("byol.service")

# BentoML imports this module as its entry point, so the entry point configures explicitly, here and only here:
# BENTOML_HOME under BYOL_HOME unless set (the model store is first read just below, by the class attribute).
paths.use_store()
MODEL_TAG = resolve_tag()
Image = Annotated[Path, Field(description="an image file (JPEG, PNG, GIF, BMP, TIFF, WebP, ...)")]


async def _info(request: Request) -> JSONResponse:
    """``GET /info`` (BentoML API routes are POST only, so this is a small mounted Starlette route)."""
    return JSONResponse(bentoml.get_current_service().runtime.info())


@bentoml.asgi_app(Starlette(routes=[Route("/info", _info, methods=["GET"])]), path="/")
@bentoml.service(name="byol_embed", workers=1, traffic={"timeout": 120})
class ByolEmbed:
    # The model reference is a class attribute so `bentoml build` packs the bundle into the Bento.
    bundle = bentoml.models.BentoModel(MODEL_TAG if ":" in MODEL_TAG else f"{MODEL_NAME}:{MODEL_TAG}")

    @bentoml.on_deployment
    def check() -> None:
        """Runs once in BentoML's main process before any worker: a bad bundle stops `bentoml serve` with one
        line (``Error: [serve] `serve` failed: bundle ...``) instead of workers failing and restarting."""
        try:
            check_bundle(MODEL_TAG)
        except BundleError as exc:  # BentoML's CLI prints a BentoMLException as one line, anything else as a trace
            raise BentoMLException(str(exc)) from None

    def __init__(self) -> None:
        # One FAISS thread per search: requests search concurrently, and OpenMP threads fighting over a busy CPU
        # made a single query up to ~30x slower (bench/index_search.py, index.vector_index.set_omp_threads).
        set_omp_threads(int(os.environ.get("BYOL_FAISS_THREADS", "1")))
        self.collection = Collection(paths.collection_dir())
        self.runtime: Runtime = load_runtime(MODEL_TAG)
        self.admin_token = os.environ.get("BYOL_ADMIN_TOKEN") or None
        self._reload_lock = asyncio.Lock()
        self._writes = asyncio.Lock()  # index writes vs the reconcile-and-swap of a reload

    def __is_ready__(self) -> bool:
        return self.runtime is not None

    @bentoml.api(route="/embed")
    async def embed(self, image: Image) -> dict:
        """One image → ``{"version", "dim", "embedding": [D floats]}`` (unit L2 norm)."""
        rt = self.runtime
        x, _ = await to_thread.run_sync(h.decode_uploads, [image], rt.input_size)
        vec = await rt.embed(x)
        return {"version": rt.version, "dim": rt.dim, "embedding": vec[0].tolist()}

    @bentoml.api(route="/embed_batch")
    async def embed_batch(self, images: list[Image]) -> dict:
        """Several images → ``{"version", "dim", "embeddings": [[D floats], ...]}`` in upload order."""
        rt = self.runtime
        x, _ = await to_thread.run_sync(h.decode_uploads, images, rt.input_size)
        vecs = await rt.embed(x)
        return {"version": rt.version, "dim": rt.dim, "embeddings": vecs.tolist()}

    @bentoml.api(route="/search")
    async def search(self, image: Image, k: int = 10) -> dict:
        """Nearest neighbours → ``{"version", "results": [{"id", "score", "metadata"}]}``, best first."""
        rt = self.runtime
        h.check_k(k)
        if rt.index is None:
            raise Conflict(rt.missing["index"])
        x, _ = await to_thread.run_sync(h.decode_uploads, [image], rt.input_size)
        vec = await rt.embed(x)
        hits = await to_thread.run_sync(rt.index.search, vec, k, rt.version)
        return {"version": rt.version, "results": h.hits_json(hits[0])}

    @bentoml.api(route="/classify")
    async def classify(self, image: Image, method: Literal["probe", "knn"] = "probe") -> dict:
        """Class of an image → ``{"version", "method", "label", "probabilities": {class: p}}``."""
        rt = self.runtime
        clf, why = rt.classifier(method)
        if clf is None:
            raise Conflict(why)
        x, _ = await to_thread.run_sync(h.decode_uploads, [image], rt.input_size)
        vec = await rt.embed(x)
        proba = await to_thread.run_sync(clf.predict_proba, vec)
        return {"version": rt.version, "method": method, **h.proba_json(clf.classes, proba[0])}

    @bentoml.api(route="/index/add")
    async def index_add(self, images: list[Image], labels: list[str] | None = None,
                        ctx: bentoml.Context = None) -> dict:
        """(token) Store the images in the collection and index them → ``{"version", "ids": [int]}``.

        The ids are returned only after the index's write-ahead log is fsynced: an acknowledged add survives a
        crash. ``labels``, when given, has one entry per image.
        """
        h.check_token(ctx.request.headers, self.admin_token)
        rt = self.runtime
        if rt.index is None:
            raise Conflict(rt.missing["index"])
        if labels is not None and len(labels) != len(images):
            raise BadRequest(f"{len(labels)} labels for {len(images)} images: give one label per image or none")
        x, datas = await to_thread.run_sync(h.decode_uploads, images, rt.input_size)
        vecs = await rt.embed(x)
        async with self._writes:
            ids = await to_thread.run_sync(writes.add_images, rt.index, self.collection, vecs, datas, labels,
                                           rt.version)
        return {"version": rt.version, "ids": [int(i) for i in ids]}

    @bentoml.api(route="/index/remove")
    async def index_remove(self, ids: list[int], ctx: bentoml.Context = None) -> dict:
        """(token) Remove items by id → ``{"version", "removed": n}`` (unknown ids are ignored)."""
        h.check_token(ctx.request.headers, self.admin_token)
        rt = self.runtime
        if rt.index is None:
            raise Conflict(rt.missing["index"])
        async with self._writes:
            removed = await to_thread.run_sync(writes.remove, rt.index, self.collection, ids)
        return {"version": rt.version, "removed": int(removed)}

    @bentoml.api(route="/admin/reload")
    async def reload(self, version: str = "", ctx: bentoml.Context = None) -> dict:
        """(token) Load a version (default: the promoted one, else the newest) beside the served one, then swap.

        Requests in flight finish on the version they started with. → ``{"version", "previous"}``.
        """
        h.check_token(ctx.request.headers, self.admin_token)
        async with self._reload_lock:
            try:
                new = await to_thread.run_sync(load_runtime, version or served_tag())
            except (BundleError, ReleaseError) as exc:
                raise (NotFoundError if "no bundle" in str(exc) else Conflict)(str(exc)) from None
            async with self._writes:  # nothing added or removed between the reconcile and the swap is lost
                if new.index is not None and new.version != self.runtime.version:
                    synced = await to_thread.run_sync(writes.reconcile, new.index, self.collection,
                                                      lambda items: new.embed_items(items, self.collection),
                                                      new.version)
                    log.info("index of %s reconciled with the collection: %s", new.version, synced)
                old, self.runtime = self.runtime, new
            if old is not new:
                old.close()
            log.info("now serving %s (was %s)", new.version, old.version)
            return {"version": new.version, "previous": old.version}


ByolEmbed.add_asgi_middleware(UploadGuard)
