"""The service's single ASGI edge: every request passes here before BentoML parses anything.

In order, for each HTTP request (each refusal is a JSON ``[{"error": "<problem>"}]``, the shape BentoML gives 4xx,
and names the bound and its environment variable):

1. headers: duplicate or conflicting ``Content-Type`` / ``Content-Length`` / ``Authorization`` → 400;
2. routes: a POST (PUT, PATCH, DELETE...) to a path not in :data:`ROUTES` → 404, or 405 on a path routed for other
   methods (:mod:`serving.edge_routes` asks the app's router), before any byte of the body is read;
3. admin routes: the bearer token is checked before any byte of the body is read → 401 (403 when the server has no
   token), so an unauthenticated client cannot make the server buffer or parse anything;
4. a declared ``Content-Length`` over the route's limit → 413 before reading, and the body is counted while read;
5. reading: a body must be in within ``BYOL_BODY_TIMEOUT_S`` in all (→ 408), however it trickles; one not in at
   the first read holds a *reading* slot until it is (at most ``BYOL_MAX_READING``; with none free a body gets
   ``READING_GRACE_S`` to arrive without one, then 503 with
   ``Retry-After``): a body that came with its headers takes none;
6. admission, once the body is in: at most ``BYOL_MAX_INFLIGHT`` requests in flight; one more is answered 503 with
   ``Retry-After`` at once (health, readiness, metrics and ``/info`` are never refused, here nor at step 5);
7. upload routes: the multipart body is parsed, checked against the route's fields and rewritten to a canonical
   body in a worker thread (:mod:`serving.multipart`); JSON routes: the JSON is parsed in a thread (400 when bad);
8. a read-only request whose client disconnects is cancelled (its queued decoding and model work is skipped);
   writes always run to their end.

A refusal made before the body was read through closes the connection. Every POST route is listed in
:data:`ROUTES` with its fields; a GET, HEAD or OPTIONS request (``/ui``, ``/items/{id}/thumbnail``, ``/info``, an
unknown path: the app's 404) passes steps 1, 4 (with the JSON body limit), 5 and 6 and goes on unparsed. Why
reading slots apart from in-flight ones: clients that send headers and then a byte now and then would otherwise
hold every in-flight slot for as long as they like, and every real request would get 503.

Why here and not in the endpoints: BentoML 1.4.39 reads and parses the body before our endpoint code runs, and a
few bodies end in a 500 (or a hung request) in there; the edge is the one place that sees every request first.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from dataclasses import dataclass

from anyio import CapacityLimiter, to_thread
from python_multipart.multipart import parse_options_header
from starlette.routing import Match

from serving.access import admin_token
from serving.edge_routes import match_scope
from serving.limits import Limits
from serving.multipart import SCOPE_KEY, BodyError, Form, json_problem, part_problems, prepare

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RouteRule:
    form: Form | None = None  # an upload route (multipart)
    json: bool = False  # a JSON route
    admin: bool = False
    cancel_on_disconnect: bool = False


ROUTES: dict[str, RouteRule] = {
    "/embed": RouteRule(Form(frozenset({"image"})), cancel_on_disconnect=True),
    "/embed_batch": RouteRule(Form(frozenset({"images"}), many=True), cancel_on_disconnect=True),
    "/search": RouteRule(Form(frozenset({"image"}), frozenset({"k"})), cancel_on_disconnect=True),
    "/search_batch": RouteRule(Form(frozenset({"images"}), frozenset({"k"}), many=True), cancel_on_disconnect=True),
    "/search_by_id": RouteRule(json=True, cancel_on_disconnect=True),
    "/classify": RouteRule(Form(frozenset({"image"}), frozenset({"method"})), cancel_on_disconnect=True),
    "/index/add": RouteRule(Form(frozenset({"images"}), frozenset({"labels"}), many=True), admin=True),
    "/index/remove": RouteRule(json=True, admin=True),
    "/admin/reload": RouteRule(json=True, admin=True),
}
FILE_FIELDS: dict[str, frozenset[str]] = {path: r.form.files for path, r in ROUTES.items() if r.form}
__all__ = ["ADMISSION", "FILE_FIELDS", "ROUTES", "UploadGuard", "part_problems"]
READING_GRACE_S = 0.25  # with every reading slot taken, how long a body may take to arrive without one
NEVER_REFUSED = frozenset({"/readyz", "/healthz", "/livez", "/metrics", "/info"})
PASSED_ON = frozenset({"GET", "HEAD", "OPTIONS"})  # to any path: the app answers (its 404 for an unknown one)
GONE = "client closed the request"
INLINE_BODY_BYTES = 64 * 2**10  # a multipart body this small, with at most INLINE_PARTS parts, is parsed on the
INLINE_PARTS = 8  # event loop: measured ~10 us a part + ~2 ns a byte, so at most ~0.2 ms, about a thread hop's cost


def _small(body: bytes, content_type: bytes) -> bool:
    """Whether parsing ``body`` is bounded well enough for the event loop: few bytes, few boundaries (counted in C,
    with the boundary the parser will use)."""
    if len(body) > INLINE_BODY_BYTES:
        return False
    boundary = parse_options_header(content_type)[1].get(b"boundary")
    return bool(boundary) and body.count(b"--" + boundary) <= INLINE_PARTS + 1


class Admission:
    """How many requests are in flight or still sending their bodies (one event loop: no lock needed), and what was
    refused, timed out or cancelled."""

    def __init__(self) -> None:
        self.limit, self.inflight, self.refused, self.cancelled = 0, 0, 0, 0
        self.reading_limit, self.reading, self.refused_reading, self.timed_out, self.unrouted = 0, 0, 0, 0, 0

    def stats(self) -> dict:
        return {"inflight": self.inflight, "limit": self.limit, "refused_503": self.refused,
                "cancelled_on_disconnect": self.cancelled, "reading": self.reading,
                "reading_limit": self.reading_limit, "refused_reading_503": self.refused_reading,
                "body_timeouts_408": self.timed_out, "unrouted_refused": self.unrouted}


ADMISSION = Admission()  # the worker's one edge reports here (GET /info → "admission")


class EdgeError(Exception):
    def __init__(self, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or []


def check_headers(headers: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """One value per header that decides how the body is read or who sends it."""
    seen: dict[bytes, list[bytes]] = {}
    for k, v in headers:
        seen.setdefault(k.lower(), []).append(v)
    for key in (b"content-type", b"content-length", b"authorization", b"transfer-encoding"):
        values = seen.get(key, [])
        if len(values) > 1:
            what = "conflicting" if len(set(values)) > 1 else "duplicate"
            raise EdgeError(400, f"{what} {key.decode().title()} headers ({len(values)}): send exactly one")
    one = {k: v[0] for k, v in seen.items()}
    if b"content-length" in one and b"transfer-encoding" in one:
        raise EdgeError(400, "both Content-Length and Transfer-Encoding given: send one")
    if b"content-length" in one and not one[b"content-length"].strip().isdigit():
        raise EdgeError(400, "Content-Length is not a number")
    return one


def check_routed(scope, method: str, path: str) -> None:
    """A request that sends a body (a method other than GET, HEAD or OPTIONS) to a path not in :data:`ROUTES` is
    refused before its body is read: 404 when the app routes no such path, 405 when it routes it for other methods.
    A route the app has for this method (none today) goes on, its body read with the JSON limit."""
    matched = match_scope(scope)
    if matched.match is Match.FULL:
        return
    ADMISSION.unrouted += 1
    shown = json.dumps(path[:200])
    if matched.match is Match.PARTIAL:
        allowed = ", ".join(sorted(matched.methods)) or "other methods"
        raise EdgeError(405, f"method {method} is not allowed on {shown} (it takes {allowed})",
                        [(b"allow", ", ".join(sorted(matched.methods)).encode())] if matched.methods else [])
    raise EdgeError(404, f"unknown path {shown}: this server routes no {method} {shown}; the POST routes are "
                         f"{', '.join(ROUTES)}")


def check_auth(headers: dict[bytes, bytes], expected: str | None) -> None:
    if not expected:
        raise EdgeError(403, "admin endpoints are disabled: the server has no BYOL_ADMIN_TOKEN")
    scheme, _, given = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise EdgeError(401, "unauthorized: missing or wrong bearer token (Authorization: Bearer <token>)",
                        [(b"www-authenticate", b"Bearer")])


def check_json(body: bytes) -> None:
    if not body.strip():
        return
    try:
        json.loads(body)
    except RecursionError:
        raise BodyError(400, "JSON body nested too deeply") from None
    except ValueError as exc:
        raise BodyError(400, f"invalid JSON body: {exc}") from None


class UploadGuard:
    """Pure ASGI middleware (BentoML's ``add_asgi_middleware``); ``limits`` default to the environment's."""

    def __init__(self, app, limits: Limits | None = None) -> None:
        self.app = app
        self.limits = limits or Limits.from_env()
        self.token = admin_token()
        self.admission = ADMISSION
        self.admission.limit = self.limits.max_inflight
        self.admission.reading_limit = self.limits.max_reading
        self._threads: CapacityLimiter | None = None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope.get("path", ""), scope.get("method", "GET")
        rule = ROUTES.get(path) if method == "POST" else None
        try:
            headers = check_headers(scope.get("headers") or [])
            if rule is None and method not in PASSED_ON:
                check_routed(scope, method, path)
            if rule and rule.admin:
                check_auth(headers, self.token)
            limit, variable = ((self.limits.max_body, "BYOL_MAX_BODY_BYTES") if rule and rule.form
                               else (self.limits.max_json_body, "BYOL_MAX_JSON_BYTES"))
            declared = int(headers.get(b"content-length", b"0") or 0)
            if declared > limit:
                raise EdgeError(413, f"request body of {declared} bytes is over the limit of {limit} bytes "
                                     f"({variable})")
        except EdgeError as exc:
            return await reply(send, exc.status, exc.message, exc.headers, close=True)
        try:
            body = await self._read_in_time(receive, limit, variable, path)
        except EdgeError as exc:
            return await reply(send, exc.status, exc.message, exc.headers, close=True)
        if body is None:  # the client left while sending; still answer (dropped by the server): BentoML's
            return await reply(send, 400, GONE)  # TimeoutMiddleware waits for a first send otherwise
        try:
            counted = self._admit(path)
        except EdgeError as exc:
            return await reply(send, exc.status, exc.message, exc.headers)
        try:
            try:
                scope, body = await self._check_body(scope, headers, rule, body)
            except (EdgeError, BodyError) as exc:
                return await reply(send, exc.status, exc.message, getattr(exc, "headers", None))
            await self._run(scope, receive, send, body, bool(rule and rule.cancel_on_disconnect))
        finally:
            if counted:
                self.admission.inflight -= 1

    def _busy(self, what: str, count: int, limit: int, variable: str) -> EdgeError:
        wait = self.limits.retry_after_s
        return EdgeError(503, f"server busy: {count} {what} (limit {limit}, {variable}); retry after {wait} s",
                         [(b"retry-after", str(wait).encode())])

    def _start_reading(self, path: str) -> bool:
        """Take a reading slot for a body still arriving (→ True), or refuse with 503 + Retry-After; a path never
        refused takes none."""
        if path in NEVER_REFUSED:
            return False
        if self.admission.reading >= self.limits.max_reading:
            self.admission.refused_reading += 1
            raise self._busy("request bodies still arriving", self.admission.reading, self.limits.max_reading,
                             "BYOL_MAX_READING")
        self.admission.reading += 1
        return True

    def _admit(self, path: str) -> bool:
        """Take an in-flight slot (→ True) once the body is in, or refuse with 503 + Retry-After; some paths are
        never refused."""
        if path in NEVER_REFUSED:
            return False
        if self.admission.inflight >= self.limits.max_inflight:
            self.admission.refused += 1
            raise self._busy("requests in flight", self.admission.inflight, self.limits.max_inflight,
                             "BYOL_MAX_INFLIGHT")
        self.admission.inflight += 1
        return True

    async def _read_in_time(self, receive, limit: int, variable: str, path: str) -> bytes | None:
        """The whole body (None: the client left), in within ``body_timeout_s`` (one deadline for all of it, however
        it trickles), else 408. A body not in at the first read holds a reading slot until it is; with none free it
        gets ``READING_GRACE_S`` to arrive without one (a real client's body follows its headers at once: tricklers
        holding every slot must not turn it away), then 503."""
        seconds, reading, grace = self.limits.body_timeout_s, False, None
        chunks, size, more = [], 0, True
        try:
            async with asyncio.timeout(seconds):
                while more:
                    if grace is None:
                        message = await receive()
                    else:
                        try:
                            message = await asyncio.wait_for(receive(), max(0.0, grace - time.monotonic()))
                        except TimeoutError:
                            reading, grace = self._start_reading(path), None  # a slot freed meanwhile, or 503
                            continue
                    if message["type"] == "http.disconnect":
                        return None
                    chunks.append(message.get("body", b""))
                    size += len(chunks[-1])
                    if size > limit:
                        raise EdgeError(413, f"request body larger than the limit of {limit} bytes ({variable})")
                    more = message.get("more_body", False)
                    if more and not reading and grace is None:
                        if path in NEVER_REFUSED or self.admission.reading < self.limits.max_reading:
                            reading = self._start_reading(path)
                        else:
                            grace = time.monotonic() + READING_GRACE_S
        except TimeoutError:
            self.admission.timed_out += 1
            raise EdgeError(408, f"request body not fully received within {seconds} s (BYOL_BODY_TIMEOUT_S)") \
                from None
        finally:
            if reading:
                self.admission.reading -= 1
        return b"".join(chunks)

    async def _check_body(self, scope, headers: dict[bytes, bytes], rule: RouteRule | None, body: bytes):
        """The body the app will read (multipart rewritten), and the scope with matching headers."""
        if rule is None:
            return scope, body
        ctype = headers.get(b"content-type", b"")
        kind = ctype.split(b";")[0].strip().lower()
        if rule.json:
            if kind not in (b"", b"application/json"):
                raise EdgeError(415, f"unsupported content type {ctype.decode(errors='replace')!r}: send JSON")
            await to_thread.run_sync(check_json, body, limiter=self._limiter())
            return scope, body
        fields = ", ".join(repr(f) for f in sorted(rule.form.files))
        if kind != b"multipart/form-data":
            if kind in (b"", b"application/json"):  # BentoML validates JSON itself (400: a string is no image)
                if len(body) > self.limits.max_json_body:
                    raise EdgeError(413, f"JSON body of {len(body)} bytes is over the limit of "
                                         f"{self.limits.max_json_body} bytes; send images as multipart/form-data")
                problem = await to_thread.run_sync(json_problem, body, rule.form, self.limits,
                                                   limiter=self._limiter())
                if problem:
                    raise problem
                return scope, body
            raise EdgeError(415, f"unsupported content type {ctype.decode(errors='replace')!r}: send the image(s) "
                                 f"as multipart/form-data file field(s) {fields}")
        if _small(body, ctype):  # bounded cost: cheaper here than a hop to a thread and back
            new_body, new_type, parsed = prepare(body, ctype, rule.form, self.limits)
        else:
            new_body, new_type, parsed = await to_thread.run_sync(prepare, body, ctype, rule.form, self.limits,
                                                                  limiter=self._limiter())
        scope = {**scope, SCOPE_KEY: parsed}
        if new_body is body:
            return scope, body
        rest = [(k, v) for k, v in scope.get("headers") or [] if k.lower() not in (b"content-type", b"content-length")]
        headers = [*rest, (b"content-type", new_type), (b"content-length", str(len(new_body)).encode())]
        return {**scope, "headers": headers}, new_body

    def _limiter(self) -> CapacityLimiter:
        if self._threads is None:
            self._threads = CapacityLimiter(self.limits.threads)
        return self._threads

    async def _run(self, scope, receive, send, body: bytes, cancellable: bool) -> None:
        """Hand the buffered body on; watch the connection, and cancel a read-only request whose client left."""
        gone = asyncio.Event()
        delivered = started = answered = False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        async def send_with_retry_after(message) -> None:
            nonlocal answered, started
            started = started or message["type"] == "http.response.start"
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                answered = True  # after this the server reports a "disconnect": the response is complete
            if message["type"] == "http.response.start" and message["status"] == 503:
                names = {k.lower() for k, _ in message.get("headers", [])}
                if b"retry-after" not in names:
                    message = {**message, "headers": [*message.get("headers", []),
                                                      (b"retry-after", str(self.limits.retry_after_s).encode())]}
            await send(message)

        watcher = asyncio.ensure_future(watch())
        app = asyncio.ensure_future(self.app(scope, replay, send_with_retry_after))
        try:
            if cancellable:
                await asyncio.wait({app, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if gone.is_set() and not answered and not app.done():
                    app.cancel()
                    self.admission.cancelled += 1
                    log.info("%s: client disconnected, request cancelled", scope.get("path"))
            try:
                await app
            except asyncio.CancelledError:
                if not (gone.is_set() and app.cancelled()):
                    raise
                if not started:
                    await reply(send, 400, GONE)
        finally:
            watcher.cancel()
            if not app.done():
                app.cancel()


async def reply(send, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None,
                close: bool = False) -> None:
    """Same body shape BentoML gives other 4xx errors: ``[{"error": msg}]``. ``close``: refused before the body
    was read through, so the connection is closed after the answer (what is left of the body is never read)."""
    payload = json.dumps([{"error": message}]).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            *(headers or []), *([(b"connection", b"close")] if close else [])]})
    await send({"type": "http.response.body", "body": payload})
