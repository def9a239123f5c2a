"""The byol-embed HTTP API: the embedding service (:class:`ByolEmbed`), in front of the index service.

Two BentoML services, composed with ``bentoml.depends`` (one ``bentoml serve serving.service:ByolEmbed`` or
``byol serve`` starts both on one box; in a cluster each is a deployment scaled on its own):

* :class:`ByolEmbed` — public, stateless: the edge (:mod:`serving.upload_guard`), decoding, the micro-batcher and
  ONNX Runtime. ``BYOL_EMBED_WORKERS`` processes (default: one per GPU, else one per two CPUs:
  :func:`serving.runtime.embed_workers`), each holding one version's encoder;
* :class:`serving.index_service.ByolIndex` — one process: the index, the classifiers, the collection, the one write
  path, versions, reload and swap.

Vectors travel to the index with the version that made them and are refused there when it serves another one; the
worker then follows (:mod:`serving.following`: the whole protocol). Which bundle: ``$BYOL_MODEL_TAG``, else the
promoted version in ``$BYOL_HOME/release.json``, else the newest in the model store. Admin endpoints need
``Authorization: Bearer $BYOL_ADMIN_TOKEN``. Uploads are typed ``Path`` and decoded by ``serving.contract.image`` (a
``PIL.Image`` parameter would turn a non-image into a 500 in BentoML 1.4.39).

Every request first passes the edge (:mod:`serving.upload_guard`: body and part limits, auth before the body,
admission with 503 + Retry-After, multipart parsed once and checked; large bodies off the event loop); the endpoints
take the uploads' bytes from the edge's parse (:mod:`serving.multipart`: BentoML parses no body a second time and
spools no upload to a temp file) and answer finished JSON (or ``.npy`` for ``Accept: application/x-npy`` on
``/embed_batch``); limits are in :mod:`serving.limits`. Batching: every embedding goes through the worker's
:class:`serving.batching.MicroBatcher` — ``MAX_BATCH_SIZE`` = 64 images per ONNX Runtime call, ``MAX_WAIT_MS`` =
2 ms longest wait for company. GET routes (``/info``, the ``/ui`` page, ``/items/{id}/thumbnail``):
:mod:`serving.web`; what the OpenAPI page at ``/`` says: :mod:`serving.openapi`; the project's ``byol_*`` metrics
on ``/metrics`` (both services': BentoML gives them one multiprocess directory): :mod:`serving.metrics`.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Annotated, Literal

import bentoml
from bentoml.exceptions import BentoMLException
from pydantic import Field

from serving import access, deadline, memory, metrics, multipart, openapi, paths, web
from serving import http_helpers as h
from serving.contract.bundle import MODEL_NAME, BundleError
from serving.errors import TooLarge, Unavailable
from serving.following import Follower, ask, follow_interval
from serving.index_service import ByolIndex
from serving.runtime import check_bundle, embed_workers, load_runtime, resolve_tag
from serving.upload_guard import UploadGuard

log = logging.getLogger("byol.service")

# BentoML imports this module as its entry point (in every process of both services), so the entry point
# configures explicitly, here and only here: BENTOML_HOME under BYOL_HOME unless set (the model store is first read
# just below, by the class attribute), the allocator's mmap threshold (serving.memory: memory a swap frees goes back
# to the OS), and request deadlines that do not keep every request alive for the whole timeout (serving.deadline),
# and request metrics labelled by route template, not by item id (serving.metrics), and multipart inputs built from
# the edge's parse (serving.multipart).
paths.use_store()
memory.configure_allocator()
HOOKS = {"serving.deadline.install": deadline.install, "serving.metrics.install_route_labels":
         metrics.install_route_labels, "serving.multipart.install": multipart.install}
for _name, _install in HOOKS.items():  # each hook is a guarantee: a server without it must not start
    if not _install():
        raise RuntimeError(f"{_name} cannot be applied to BentoML {bentoml.__version__}: the internal it patches "
                           "has moved; byol-embed is tested with bentoml==1.4.39 (pyproject.toml)")
MODEL_TAG = resolve_tag()
Image = Annotated[Path, Field(description="an image file (JPEG, PNG, GIF, BMP, TIFF, WebP, ...)")]
K = Annotated[int, Field(description="how many neighbours (1-1000)")]
WORKER_HEADER = "x-byol-worker"  # on /search and /index/add answers: which embedding worker answered


def check_results(queries: int, k: int) -> None:
    """``/search_batch``: queries x k bounded (``BYOL_MAX_RESULTS``): the answer's size, its search and its JSON."""
    if queries * k > h.LIMITS.max_results:
        raise TooLarge(f"too many results in one answer: {queries} images x k {k} = {queries * k} (limit "
                       f"{h.LIMITS.max_results}, BYOL_MAX_RESULTS); send fewer images or a smaller k")


def named_503(endpoint):
    """BentoML answers every 5xx with a fixed text; a 503 of ours (decode memory, storage, the index service) must
    name its bound and what to do: answered here, as JSON ``[{"error": ...}]`` like the 4xx, with ``Retry-After``."""

    @functools.wraps(endpoint)
    async def answer(*args, **kwargs):
        try:
            return await endpoint(*args, **kwargs)
        except Unavailable as exc:
            from starlette.responses import JSONResponse

            log.warning("%s: 503: %s", endpoint.__name__, exc.message)
            return JSONResponse([{"error": exc.message}], status_code=503,
                                headers={"Retry-After": str(h.LIMITS.retry_after_s)})

    return answer


def finished(body: bytes, headers: dict):
    """An answer the index service already wrote as JSON, sent as it is (no second encoding on this loop)."""
    from starlette.responses import Response

    return Response(body, media_type="application/json", headers=headers)


@bentoml.asgi_app(web.app(web.load_ui()), path="/")  # GET /info, /ui, /items/{id}/thumbnail (serving.web)
@bentoml.service(name="byol_embed", description=openapi.DESCRIPTION, service_class=openapi.DescribedService,
                 workers=embed_workers(), traffic={"timeout": 120}, http={"host": "127.0.0.1"})
class ByolEmbed:
    # The model reference is a class attribute so `bentoml build` packs the bundle into the Bento.
    bundle = bentoml.models.BentoModel(MODEL_TAG if ":" in MODEL_TAG else f"{MODEL_NAME}:{MODEL_TAG}")
    index = bentoml.depends(ByolIndex)

    @bentoml.on_deployment
    def check() -> None:
        """Runs once in BentoML's main process before any worker: a bad bundle stops `bentoml serve` with one
        line (``Error: [serve] `serve` failed: bundle ...``) instead of workers failing and restarting."""
        try:
            check_bundle(MODEL_TAG)
            follow_interval()
            access.admin_token()
        except (BundleError, ValueError) as exc:  # BentoML's CLI prints a BentoMLException as one line
            raise BentoMLException(str(exc)) from None

    def __init__(self) -> None:
        # which worker answered: BentoML's worker number (1..BYOL_EMBED_WORKERS), sent as x-byol-worker
        self.worker = str(bentoml.server_context.worker_index or os.getpid())
        self.follower = Follower(load_runtime(MODEL_TAG), self.index, self.worker, follow_interval())
        self.admin_token = access.admin_token()

    @property
    def headers(self) -> dict:
        return {WORKER_HEADER: self.worker}

    @bentoml.on_startup
    async def start_following(self) -> None:
        self.follower.start()

    @bentoml.on_shutdown
    async def stop_following(self) -> None:
        await self.follower.stop()

    @property
    def runtime(self):
        return self.follower.runtime

    def __is_ready__(self) -> bool:
        """Ready once the index service has told this worker which version it serves (and counts it alive)."""
        return self.follower.polled

    @bentoml.api(route="/embed")
    @named_503
    async def embed(self, image: Image, ctx: bentoml.Context = None) -> dict:
        """One image → ``{"version", "dim", "embedding": [D floats]}`` (unit L2 norm)."""
        rt = self.runtime
        x, _ = await h.decode_async([image], rt.input_size, ctx, "image")
        vec = await rt.embed(x)
        return h.json_response({"version": rt.version, "dim": rt.dim, "embedding": vec[0].tolist()})

    @bentoml.api(route="/embed_batch")
    @named_503
    async def embed_batch(self, images: list[Image], ctx: bentoml.Context = None) -> dict:
        """Several images → ``{"version", "dim", "embeddings": [[D floats], ...]}`` in upload order; with
        ``Accept: application/x-npy`` the float32 ``[N, D]`` array as ``.npy`` bytes instead (version and dim in the
        ``x-byol-version`` and ``x-byol-dim`` headers)."""
        rt = self.runtime
        x, _ = await h.decode_async(images, rt.input_size, ctx, "images")
        return await h.embeddings_response(await rt.embed(x), rt.version, ctx)

    async def _pixels(self, images: list[Path], ctx, field: str):
        """The request's images at any input size, decoded once per size (a reload may change the size)."""
        datas = h.edge_uploads(ctx, field)
        if datas is None:
            datas = await h.read_uploads_async(images)
        return datas, lambda size: h.pixels_async(datas, size)

    @bentoml.api(route="/search")
    @named_503
    async def search(self, image: Image, k: K = 10, ctx: bentoml.Context = None) -> dict:
        """Nearest neighbours → ``{"version", "results": [{"id", "score", "metadata"}]}``, best first."""
        h.check_k(k)
        self.follower.check("index")
        _, pixels = await self._pixels([image], ctx, "image")
        out = await self.follower.call(pixels, "search", k=k, endpoint="search")
        return finished(out["body"], self.headers)

    @bentoml.api(route="/search_batch")
    @named_503
    async def search_batch(self, images: list[Image], k: K = 10, ctx: bentoml.Context = None) -> dict:
        """Neighbours of each image → ``{"version", "results": [[{"id", "score", "metadata"}], ...]}`` in upload
        order, best first (limits as ``/embed_batch``; images x k at most ``BYOL_MAX_RESULTS``, else 413)."""
        h.check_k(k)
        self.follower.check("index")
        datas, pixels = await self._pixels(images, ctx, "images")
        check_results(len(datas), k)
        out = await self.follower.call(pixels, "search", k=k, endpoint="search_batch")
        return finished(out["body"], self.headers)

    @bentoml.api(route="/search_by_id")
    @named_503
    async def search_by_id(self, id: Annotated[int, Field(description="an item id of the served index")],
                           k: K = 10) -> dict:
        """Neighbours of an indexed item, itself left out → ``{"version", "id", "metadata", "results": [{"id",
        "score", "metadata"}]}``, best first; 404 for an id the served index does not hold."""
        h.check_k(k)
        return h.json_response(await ask(self.index.to_async.neighbours(item_id=id, k=k)))

    @bentoml.api(route="/classify")
    @named_503
    async def classify(self, image: Image, method: Literal["probe", "knn"] = "probe",
                       ctx: bentoml.Context = None) -> dict:
        """Class of an image → ``{"version", "method", "label", "probabilities": {class: p}}``."""
        self.follower.check(method)
        _, pixels = await self._pixels([image], ctx, "image")
        return h.json_response(await self.follower.call(pixels, "classify", method=method))

    @bentoml.api(route="/index/add")
    @named_503
    async def index_add(self, images: list[Image], labels: list[str] | None = None,
                        ctx: bentoml.Context = None) -> dict:
        """(token) Store the images in the collection and index them → ``{"version", "ids": [int]}``.

        The ids are returned only after the index's write-ahead log is fsynced: an acknowledged add survives a
        crash. Idempotent: an image already indexed (same bytes) gets its existing id back. ``labels``, when given,
        has one entry per image.
        """
        h.check_token(ctx.request.headers, self.admin_token)
        datas, pixels = await self._pixels(images, ctx, "images")
        h.check_labels(labels, len(datas))
        self.follower.check("index")
        out = await self.follower.call(pixels, "add", datas=datas, labels=labels)
        ctx.response.headers.update(self.headers)
        return {"version": out["version"], "ids": out["ids"]}

    @bentoml.api(route="/index/remove")
    @named_503
    async def index_remove(self, ids: list[int] | None = None, version: str = "", uris: list[str] | None = None,
                           ctx: bentoml.Context = None) -> dict:
        """(token) Remove items → ``{"version", "removed": n}`` (unknown ones are ignored). By ``ids`` with the
        ``version`` they came from (409 when the server serves another version now), or by ``uris``."""
        h.check_token(ctx.request.headers, self.admin_token)
        h.check_removal(ids or [], uris or [], version)
        return await ask(self.index.to_async.remove(ids=ids or [], uris=uris or [], version=version))

    @bentoml.api(route="/admin/reload")
    @named_503
    async def reload(self, version: str = "", ctx: bentoml.Context = None) -> dict:
        """(token) Load a version (default: the promoted one, else the newest) beside the served one, then swap
        the index and every embedding worker to it; answers once every worker has followed.

        Requests in flight finish on the version they started with (or are embedded again with the new one when
        they reach the index after the swap). → ``{"version", "previous", "workers", "followed"}``.
        """
        h.check_token(ctx.request.headers, self.admin_token)
        swapped = await ask(self.index.to_async.reload(version=version))
        await self.follower.follow(swapped["version"])
        return {**swapped, **await self.follower.wait_followed(swapped["version"])}


ByolEmbed.add_asgi_middleware(access.TrustedHosts)  # outermost: an untrusted Host is refused before anything
ByolEmbed.add_asgi_middleware(UploadGuard)
