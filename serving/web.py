"""The service's GET routes, a small Starlette app mounted beside BentoML's (whose API routes are POST only).

``GET /info``                  what is served (JSON)
``GET /ui``                    the visual search page (``serving/ui/``: plain HTML + JS + CSS, no CDN, no build step)
``GET /ui/app.js``, ``/ui/style.css``   its script and style sheet
``GET /items/{id}/thumbnail``  a PNG of an indexed item of the served version, at most 128 px a side

The page's files are read once, when the service starts (:func:`load_ui`), and answered from memory. They carry a
Content-Security-Policy that allows this server only: the page cannot load anything from elsewhere, so it works
the same offline. Errors are JSON ``[{"error": "<problem>"}]``, the shape BentoML and the edge give other 4xx.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import bentoml
from bentoml.exceptions import BentoMLException
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from serving import items
from serving.following import ask
from serving.upload_guard import ADMISSION

log = logging.getLogger(__name__)
UI_DIR = Path(__file__).resolve().parent / "ui"
UI_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
            "style.css": "text/css; charset=utf-8"}
SECURITY = {"Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
                                       "base-uri 'none'; frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str


def load_ui(folder: Path = UI_DIR) -> dict[str, Asset]:
    """The page's files, read once. A missing one is logged and its route answers 404 naming it: an install
    without the page's files (a wheel built without package data) must still serve the API."""
    assets = {}
    for name, media in UI_FILES.items():
        try:
            assets[name] = Asset((folder / name).read_bytes(), media)
        except OSError as exc:
            log.warning("the /ui page is incomplete: cannot read %s (%s)", folder / name, exc.strerror)
    return assets


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse([{"error": message}], status_code=status)


def _service():
    return bentoml.get_current_service()


async def info(request: Request) -> JSONResponse:
    """``GET /info``: what is served — this worker's encoder and batching, the index service's index, classifiers
    and live workers — and this worker's admission counters."""
    svc = _service()
    try:
        held = await ask(svc.index.to_async.info())
    except BentoMLException as exc:
        return error(int(exc.error_code), exc.message)
    encoder = svc.runtime.info()
    return JSONResponse({**encoder, **held, "version": encoder["version"], "index_version": held["version"],
                         "worker": svc.worker, "admission": ADMISSION.stats()})


async def thumbnail(request: Request) -> Response:
    """``GET /items/{id}/thumbnail`` → ``image/png``; 400 for an id that is not an integer, 404 for one the served
    index does not hold, 409 when the served version has no index. Revalidated by ETag (version, id, image)."""
    svc = _service()

    async def image(item_id: int) -> bytes:
        return (await ask(svc.index.to_async.image(item_id=item_id)))["data"]

    try:
        item_id = items.parse_id(request.path_params["item_id"])
        item = await ask(svc.index.to_async.item(item_id=item_id))
        png = await items.thumbnail(item, image)
    except BentoMLException as exc:
        return error(int(exc.error_code), exc.message)
    tag = item["etag"]
    headers = {"ETag": f'"{tag}"', "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    if f'"{tag}"' in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(png, media_type="image/png", headers=headers)


def app(ui: dict[str, Asset]) -> Starlette:
    """The GET routes, with the page's files already in memory."""

    def page(name: str):
        asset = ui.get(name)

        async def endpoint(request: Request) -> Response:
            if asset is None:
                return error(404, f"the /ui page's file {name} is not installed with this server (serving/ui/)")
            return Response(asset.body, media_type=asset.media_type, headers=SECURITY)

        return endpoint

    async def to_page(request: Request) -> Response:
        return RedirectResponse("../ui" + (f"?{request.url.query}" if request.url.query else ""), status_code=308)

    return Starlette(routes=[
        Route("/info", info, methods=["GET"]),
        Route("/ui", page("index.html"), methods=["GET"]),
        Route("/ui/", to_page, methods=["GET"]),
        Route("/ui/app.js", page("app.js"), methods=["GET"]),
        Route("/ui/style.css", page("style.css"), methods=["GET"]),
        Route("/items/{item_id}/thumbnail", thumbnail, methods=["GET"]),
    ])
