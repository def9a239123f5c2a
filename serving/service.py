"""The byol-embed HTTP API: one BentoML service over the loaded :class:`serving.runtime.Runtime`.

Start: ``byol serve`` (or ``bentoml serve serving.service:ByolEmbed``; it binds 127.0.0.1 unless ``--host`` /
``BENTOML_HOST`` says otherwise). Which bundle: ``$BYOL_MODEL_TAG``, else the promoted version in
``$BYOL_HOME/release.json``, else the newest in the model store. Admin endpoints need
``Authorization: Bearer $BYOL_ADMIN_TOKEN``. Uploads are typed ``Path`` and decoded by ``serving.contract.image`` (a
``PIL.Image`` parameter would turn a non-image into a 500 in BentoML 1.4.39).

Every request first passes the edge (:mod:`serving.upload_guard`: body and part limits, auth before the body,
admission with 503 + Retry-After, multipart parsed once and checked; large bodies off the event loop); the endpoints
take the uploads' bytes from the edge's parse (:mod:`serving.multipart`: BentoML parses no body a second time and
spools no upload to a temp file) and answer finished JSON (or ``.npy`` for ``Accept: application/x-npy`` on
``/embed_batch``); limits are in :mod:`serving.limits`. Batching: every embedding goes through the loaded version's
:class:`serving.batching.MicroBatcher` — ``MAX_BATCH_SIZE`` = 64 images per ONNX Runtime call, ``MAX_WAIT_MS`` =
2 ms longest wait for company. Writes and reloads: :mod:`serving.served`. GET routes (``/info``, the ``/ui`` page,
``/items/{id}/thumbnail``): :mod:`serving.web`; what the OpenAPI page at ``/`` says: :mod:`serving.openapi`; the
project's ``byol_*`` metrics on ``/metrics``: :mod:`serving.metrics`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Literal

import bentoml
from anyio import to_thread
from bentoml.exceptions import BentoMLException
from pydantic import Field

from index.collection import Collection
from index.vector_index import set_omp_threads
from serving import deadline, items, memory, metrics, multipart, openapi, paths, web
from serving import http_helpers as h
from serving.contract.bundle import MODEL_NAME, BundleError
from serving.errors import Conflict
from serving.runtime import check_bundle, load_runtime, resolve_tag
from serving.served import Served
from serving.upload_guard import UploadGuard

log = logging.getLogger("byol.service")

# BentoML imports this module as its entry point, so the entry point configures explicitly, here and only here:
# BENTOML_HOME under BYOL_HOME unless set (the model store is first read just below, by the class attribute), the
# allocator's mmap threshold (serving.memory: memory a swap frees goes back to the OS), and
# request deadlines that do not keep every request alive for the whole timeout (serving.deadline), and request
# metrics labelled by route template, not by item id (serving.metrics), and multipart inputs built from the edge's
# parse (serving.multipart).
paths.use_store()
memory.configure_allocator()
deadline.install()
metrics.install_route_labels()
multipart.install()
MODEL_TAG = resolve_tag()
Image = Annotated[Path, Field(description="an image file (JPEG, PNG, GIF, BMP, TIFF, WebP, ...)")]
K = Annotated[int, Field(description="how many neighbours (1-1000)")]


@bentoml.asgi_app(web.app(web.load_ui()), path="/")  # GET /info, /ui, /items/{id}/thumbnail (serving.web)
@bentoml.service(name="byol_embed", description=openapi.DESCRIPTION, service_class=openapi.DescribedService,
                 workers=1, traffic={"timeout": 120}, http={"host": "127.0.0.1"})
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
        self.served = Served(load_runtime(MODEL_TAG), Collection(paths.collection_dir()))
        self.admin_token = h.env_token()
        metrics.report(self.runtime)

    @property
    def runtime(self):
        return self.served.runtime

    def __is_ready__(self) -> bool:
        return self.served.runtime is not None

    async def _report(self) -> None:
        """The served version and its index size for ``/metrics`` (in a thread: the size waits for index writes)."""
        await to_thread.run_sync(metrics.report, self.runtime)

    @bentoml.api(route="/embed")
    async def embed(self, image: Image, ctx: bentoml.Context = None) -> dict:
        """One image → ``{"version", "dim", "embedding": [D floats]}`` (unit L2 norm)."""
        rt = self.runtime
        x, _ = await h.decode_async([image], rt.input_size, ctx, "image")
        vec = await rt.embed(x)
        return h.json_response({"version": rt.version, "dim": rt.dim, "embedding": vec[0].tolist()})

    @bentoml.api(route="/embed_batch")
    async def embed_batch(self, images: list[Image], ctx: bentoml.Context = None) -> dict:
        """Several images → ``{"version", "dim", "embeddings": [[D floats], ...]}`` in upload order; with
        ``Accept: application/x-npy`` the float32 ``[N, D]`` array as ``.npy`` bytes instead (version and dim in the
        ``x-byol-version`` and ``x-byol-dim`` headers)."""
        rt = self.runtime
        x, _ = await h.decode_async(images, rt.input_size, ctx, "images")
        return await h.embeddings_response(await rt.embed(x), rt.version, ctx)

    @bentoml.api(route="/search")
    async def search(self, image: Image, k: K = 10, ctx: bentoml.Context = None) -> dict:
        """Nearest neighbours → ``{"version", "results": [{"id", "score", "metadata"}]}``, best first."""
        rt = self.runtime
        h.check_k(k)
        rt.require_index()
        x, _ = await h.decode_async([image], rt.input_size, ctx, "image")
        hits = await rt.search(await rt.embed(x), k, "search")
        return h.json_response({"version": rt.version, "results": h.hits_json(hits[0])})

    @bentoml.api(route="/search_batch")
    async def search_batch(self, images: list[Image], k: K = 10, ctx: bentoml.Context = None) -> dict:
        """Neighbours of each image → ``{"version", "results": [[{"id", "score", "metadata"}], ...]}`` in upload
        order, best first (limits as ``/embed_batch``)."""
        rt = self.runtime
        h.check_k(k)
        rt.require_index()
        x, _ = await h.decode_async(images, rt.input_size, ctx, "images")
        hits = await rt.search(await rt.embed(x), k, "search_batch")
        return h.json_response({"version": rt.version, "results": [h.hits_json(row) for row in hits]})

    @bentoml.api(route="/search_by_id")
    async def search_by_id(self, id: Annotated[int, Field(description="an item id of the served index")],
                           k: K = 10) -> dict:
        """Neighbours of an indexed item, itself left out → ``{"version", "id", "metadata", "results": [{"id",
        "score", "metadata"}]}``, best first; 404 for an id the served index does not hold."""
        return await items.neighbours(self.runtime, id, k, self.served.collection)

    @bentoml.api(route="/classify")
    async def classify(self, image: Image, method: Literal["probe", "knn"] = "probe",
                       ctx: bentoml.Context = None) -> dict:
        """Class of an image → ``{"version", "method", "label", "probabilities": {class: p}}``."""
        rt = self.runtime
        clf, why = rt.classifier(method)
        if clf is None:
            raise Conflict(why)
        x, _ = await h.decode_async([image], rt.input_size, ctx, "image")
        vec = await rt.embed(x)
        proba = await to_thread.run_sync(clf.predict_proba, vec)
        return h.json_response({"version": rt.version, "method": method, **h.proba_json(clf.classes, proba[0])})

    @bentoml.api(route="/index/add")
    async def index_add(self, images: list[Image], labels: list[str] | None = None,
                        ctx: bentoml.Context = None) -> dict:
        """(token) Store the images in the collection and index them → ``{"version", "ids": [int]}``.

        The ids are returned only after the index's write-ahead log is fsynced: an acknowledged add survives a
        crash. Idempotent: an image already indexed (same bytes) gets its existing id back. ``labels``, when given,
        has one entry per image.
        """
        h.check_token(ctx.request.headers, self.admin_token)
        datas = h.edge_uploads(ctx, "images") or await to_thread.run_sync(h.read_uploads, images)
        h.check_labels(labels, len(datas))
        version, ids = await self.served.add(lambda size: h.pixels_async(datas, size), datas, labels)
        await self._report()
        return {"version": version, "ids": ids}

    @bentoml.api(route="/index/remove")
    async def index_remove(self, ids: list[int] | None = None, version: str = "", uris: list[str] | None = None,
                           ctx: bentoml.Context = None) -> dict:
        """(token) Remove items → ``{"version", "removed": n}`` (unknown ones are ignored). By ``ids`` with the
        ``version`` they came from (409 when the server serves another version now), or by ``uris``."""
        h.check_token(ctx.request.headers, self.admin_token)
        h.check_removal(ids or [], uris or [], version)
        served, removed = await self.served.remove(ids or [], uris or [], version)
        await self._report()
        return {"version": served, "removed": int(removed)}

    @bentoml.api(route="/admin/reload")
    async def reload(self, version: str = "", ctx: bentoml.Context = None) -> dict:
        """(token) Load a version (default: the promoted one, else the newest) beside the served one, then swap.

        Requests in flight finish on the version they started with. → ``{"version", "previous"}``.
        """
        h.check_token(ctx.request.headers, self.admin_token)
        swapped = await self.served.reload(version)
        await self._report()
        return swapped


ByolEmbed.add_asgi_middleware(UploadGuard)
