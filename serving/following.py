"""An embedding worker's side of the version protocol: embed with the version served, call the index service with
the vectors *and* their version, follow when the index serves another one.

The protocol (README, Architecture; ../shared/DESIGN.md, contract 5):

1. the index service is the one authority on which version is served (:mod:`serving.served`);
2. a worker embeds with the :class:`serving.runtime.Runtime` it holds and sends the vectors with its version; the
   index answers ``{"stale": v}`` instead of using vectors of another version than ``v``, the one it serves;
3. on ``stale`` the worker loads ``v``'s encoder (once, under a lock: concurrent requests wait for the same load),
   swaps its runtime, embeds the request again and calls again — at most :data:`ATTEMPTS` times;
4. every worker polls the index service's status every ``BYOL_FOLLOW_S`` seconds (default 0.5), naming itself and
   its version: a worker that only answers ``/embed`` follows a reload within that time, and the index service
   knows which workers are alive on which version, so ``/admin/reload`` answers once all of them have followed.

So an answer is made by one version and names it; a write is never applied to an index that is no longer served;
nothing is answered from two versions and nothing is lost across a reload.

Errors of the index service come back as BentoML exceptions carrying its HTTP status and its JSON error body:
:func:`ask` turns them into the same status with the same one-line message at the edge; an index service that
cannot be reached is a 503 (retry), never a 500.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable

import numpy as np
from anyio import to_thread
from bentoml.exceptions import BentoMLException

from serving.errors import BadRequest, Conflict, Forbidden, NotFoundError, TooLarge, Unauthorized, Unavailable, public
from serving.runtime import Runtime, load_runtime

log = logging.getLogger(__name__)
ATTEMPTS = 3  # embeddings of one request before it gives up (two reloads during one request)
FOLLOW_ENV = "BYOL_FOLLOW_S"
FOLLOW_S = 0.5
RELOAD_WAIT_S = 30.0  # longest /admin/reload waits for every worker to follow
_STATUS = {400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFoundError, 409: Conflict, 413: TooLarge}

Pixels = Callable[[int], Awaitable[np.ndarray]]  # input size → the request's images at that size


def follow_interval(env=None) -> float:
    value = (os.environ if env is None else env).get(FOLLOW_ENV, "").strip()
    try:
        seconds = float(value or FOLLOW_S)
    except ValueError:
        raise ValueError(f"{FOLLOW_ENV} must be a number of seconds, got {value!r}") from None
    if not 0.05 <= seconds <= 60:
        raise ValueError(f"{FOLLOW_ENV} must be between 0.05 and 60 seconds, got {seconds}")
    return seconds


def message(exc: BentoMLException) -> str:
    """The one-line error of an index service answer (BentoML's body ``[{"error": msg}]``), or its raw text."""
    text = str(getattr(exc, "message", "") or exc)
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip()[:500] or type(exc).__name__
    if isinstance(body, list) and body and isinstance(body[0], dict):
        body = body[0]
    return str(body.get("error", text) if isinstance(body, dict) else text)[:500]


async def ask(call: Awaitable):
    """Await a call to the index service; its 4xx come back as the same 4xx with its message, anything else
    (not reachable, a 5xx) as a 503 the client may retry."""
    try:
        return await call
    except BentoMLException as exc:
        status = int(getattr(exc, "error_code", 500))
        kind = _STATUS.get(status)
        if kind is not None:
            raise kind(public(message(exc))) from None
        if status == 503:
            raise Unavailable(message(exc)) from None
        log.error("the index service failed (HTTP %s): %s", status, message(exc))
        raise Unavailable("the index service failed on this request (see the server log); retry") from None
    except (TimeoutError, OSError) as exc:
        log.error("the index service cannot be reached: %s", exc)
        raise Unavailable("the index service cannot be reached; retry") from None
    except Exception as exc:  # httpx's transport errors are not OSErrors
        if type(exc).__module__.startswith(("httpx", "httpcore", "aiohttp")):
            log.error("the index service cannot be reached: %r", exc)
            raise Unavailable("the index service cannot be reached; retry") from None
        raise


class Follower:
    """The worker's runtime, kept on the version the index service serves."""

    def __init__(self, runtime: Runtime, index, worker: str, interval: float) -> None:
        self.runtime = runtime
        self.index = index  # the index service (a BentoML dependency proxy)
        self.worker = worker
        self.interval = interval
        self.served = runtime.version  # the version the index service serves, as it last said
        self.missing: dict[str, str] = {}  # what that version lacks, as it last said
        self.polled = False  # whether the index service has answered a status poll yet (the worker is ready then)
        self._swap = asyncio.Lock()
        self._task: asyncio.Task | None = None

    async def follow(self, version: str) -> Runtime:
        """The runtime of ``version``, loaded and swapped in when this worker holds another one."""
        if self.runtime.version == version:
            return self.runtime
        async with self._swap:
            if self.runtime.version != version:
                try:
                    new = await to_thread.run_sync(load_runtime, version)
                except ValueError as exc:  # BundleError: the index serves a version this worker cannot load
                    log.error("cannot follow the index service to %s: %s", version, exc)
                    raise Unavailable(public(f"this worker cannot load version {version} served by the index: "
                                             f"{exc}")) from None
                old, self.runtime = self.runtime, new
                old.close()
                log.info("worker %s now embeds with %s (was %s)", self.worker, new.version, old.version)
        return self.runtime

    async def call(self, pixels: Pixels, method: str, /, **kwargs) -> dict:
        """Embed the request with the served version and call ``method`` of the index service with the vectors and
        their version; follow and embed again when the index says they are stale."""
        cache: dict[int, np.ndarray] = {}
        for _ in range(ATTEMPTS):
            rt = self.runtime
            if rt.input_size not in cache:
                cache[rt.input_size] = await pixels(rt.input_size)
            vectors = await rt.embed(cache[rt.input_size])
            out = await ask(getattr(self.index.to_async, method)(vectors=vectors, version=rt.version, **kwargs))
            if "stale" not in out:
                return out
            log.info("the index serves %s, not %s: following and embedding again", out["stale"], rt.version)
            await self.follow(out["stale"])
        raise Unavailable(f"the served version changed {ATTEMPTS} times during this request; retry")

    def check(self, what: str) -> None:
        """409 before any decoding when the served version lacks ``what`` (as the last status said)."""
        why = self.missing.get(what)
        if why and self.runtime.version == self.served:
            raise Conflict(why)

    async def poll_once(self) -> dict:
        # not through ask(): a poll that fails is retried by the loop, logged once it matters (see _poll)
        status = await self.index.to_async.status(worker=self.worker, version=self.runtime.version,
                                                  every=self.interval)
        self.served, self.missing = status["version"], status.get("missing") or {}
        await self.follow(status["version"])
        self.polled = True
        return status

    async def _poll(self) -> None:
        while True:
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the index service starting or restarting: keep the version held, try again
                if self.polled:
                    log.warning("worker %s: index service status failed: %s", self.worker, exc)
            await asyncio.sleep(self.interval if self.polled else min(self.interval, 0.05))

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._poll())

    async def stop(self) -> None:
        """End the polling (at shutdown: the index service may be gone already, which is no error then)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def wait_followed(self, version: str, timeout: float = RELOAD_WAIT_S) -> dict:
        """After a reload: wait until every live worker serves ``version`` → ``{"followed", "workers"}``."""
        deadline = time.monotonic() + timeout
        while True:
            info = await ask(self.index.to_async.info())
            workers = info.get("workers") or {}
            behind = [w for w, v in workers.items() if v != version]
            if not behind or time.monotonic() > deadline:
                return {"workers": len(workers), "followed": len(workers) - len(behind)}
            await asyncio.sleep(self.interval / 2)
