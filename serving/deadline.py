"""The request deadline (``traffic.timeout``) without BentoML 1.4.39's retention of every request for that long.

BentoML's ``TimeoutMiddleware`` (``bentoml._internal.server.http.traffic``) arms ``loop.call_later(timeout, ...)``
per request and never cancels it, so each finished request's context — its OpenTelemetry span, futures, contextvars
— stays referenced by the event loop's timer heap for the whole timeout (120 s here): measured ~4 KB a request, so
memory grew with rate x timeout (~160 MB at 340 req/s) and never settled within a soak. The service's ``traffic``
config cannot turn the middleware off (the timeout must be a positive number), so the entry point swaps in
:class:`DeadlineMiddleware`: the same contract (504 ``{"error": "Not able to process the request in N seconds"}``
when no response has started by the deadline, the request cancelled), with its timer cancelled as soon as the
request is answered.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging

from starlette.responses import JSONResponse

log = logging.getLogger(__name__)


class DeadlineMiddleware:
    """Drop-in for BentoML's ``TimeoutMiddleware(app, timeout)``."""

    def __init__(self, app, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        started = asyncio.Event()

        async def send_started(message) -> None:
            started.set()
            await send(message)

        app = asyncio.ensure_future(self.app(scope, receive, send_started))
        first = asyncio.ensure_future(started.wait())
        expired = loop.create_future()
        # an empty context: a timer armed from here would otherwise hold a copy of the request's (its span...)
        timer = loop.call_later(self.timeout, _expire, expired, context=contextvars.Context())
        try:
            await asyncio.wait({app, first, expired}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # this task is cancelled (shutdown): so is the request
            app.cancel()
            raise
        finally:
            timer.cancel()
            first.cancel()
        if not started.is_set() and not app.done() and app.cancel():
            resp = JSONResponse({"error": f"Not able to process the request in {self.timeout} seconds"},
                                status_code=504)
            await resp(scope, receive, send)
            return
        await app


def _expire(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


def install() -> bool:
    """Make BentoML build its apps with :class:`DeadlineMiddleware`; call before the service's app is built (the
    entry point, ``serving/service.py``, does). Returns whether BentoML had the middleware to replace."""
    try:
        from bentoml._internal.server.http import traffic
    except ImportError:
        return False
    if not hasattr(traffic, "TimeoutMiddleware"):
        log.warning("BentoML has no TimeoutMiddleware to replace: request deadlines are BentoML's own")
        return False
    traffic.TimeoutMiddleware = DeadlineMiddleware
    return True
