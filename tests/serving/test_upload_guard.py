"""The upload edge (``serving.upload_guard``) in front of a stand-in app: odd multipart bodies get a 4xx with a
reason before BentoML parses them; good ones reach the app byte for byte."""

from __future__ import annotations

import asyncio
import json

import pytest

from serving.limits import Limits
from serving.upload_guard import UploadGuard, part_problems

BOUNDARY = b"XyZ"


def multipart(*parts: tuple[str, str | None, bytes]) -> bytes:
    """(field, filename or None for a text field, content) → a multipart/form-data body."""
    out = b""
    for name, filename, content in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += b"--" + BOUNDARY + b"\r\nContent-Disposition: " + disp.encode() + b"\r\n\r\n" + content + b"\r\n"
    return out + b"--" + BOUNDARY + b"--\r\n"


def call(path: str, body: bytes, ctype: bytes = b"multipart/form-data; boundary=XyZ", method: str = "POST",
         chunk: int = 1 << 20, limits: Limits | None = None) -> tuple[int, bytes, bytes | None]:
    """Run one request through the guard → (status, response body, body the app received or None)."""
    received: dict = {}

    async def app(scope, receive, send):
        msg = await receive()
        received["body"] = msg["body"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    chunks = [body[i:i + chunk] for i in range(0, len(body), chunk)] or [b""]
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent: list[dict] = []

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "path": path, "method": method, "headers": [(b"content-type", ctype)]}
    asyncio.run(UploadGuard(app, limits)(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:]), received.get("body")


def error(body: bytes) -> str:
    return json.loads(body)[0]["error"]


def test_a_good_upload_reaches_the_app_unchanged():
    body = multipart(("image", "a.png", b"\x89PNG..."), ("k", None, b"5"))
    status, _, received = call("/search", body, chunk=7)
    assert status == 200 and received == body


def test_a_file_under_the_wrong_field_name_is_400_naming_the_field():
    status, body, received = call("/embed", multipart(("picture", "a.png", b"x")))
    assert status == 400 and "'picture'" in error(body) and "'image'" in error(body) and received is None


def test_text_in_a_file_field_is_refused_never_fetched():
    status, body, _ = call("/embed", multipart(("image", None, b"http://169.254.169.254/latest")))
    assert status == 400 and "never fetches URLs" in error(body)


def test_a_multipart_body_without_boundary_is_400():
    status, body, _ = call("/embed", b"--x--", ctype=b"multipart/form-data")
    assert status == 400 and "boundary" in error(body)


def test_an_unsupported_content_type_is_415():
    status, body, _ = call("/embed", b"abc", ctype=b"text/plain")
    assert status == 415 and "multipart/form-data" in error(body)


def test_json_bodies_and_other_routes_pass_through_to_the_app():
    assert call("/embed", b"{}", ctype=b"application/json")[0] == 200
    assert call("/info", b"anything", ctype=b"text/plain", method="GET")[0] == 200
    assert call("/embed", b"", method="GET")[0] == 200
    assert call("/nowhere", b"", method="GET")[0] == 200  # GET/HEAD to any path: the app answers (its 404)


def test_a_body_over_the_limit_is_413_naming_the_variable():
    status, body, received = call("/embed", multipart(("image", "a.png", b"x" * 200)), chunk=50,
                                  limits=Limits(max_body=100))
    assert status == 413 and "100 bytes" in error(body) and "BYOL_MAX_BODY_BYTES" in error(body)
    assert received is None


@pytest.mark.parametrize("fields,problem", [
    ({"image"}, None),
    ({"images"}, "unexpected file field 'image'"),
])
def test_part_problems_names_the_first_problem(fields, problem):
    got = part_problems(multipart(("image", "a.png", b"x")), BOUNDARY, frozenset(fields))
    assert got == problem if problem is None else problem in got


def parsed_by_edge(path: str, body: bytes) -> tuple[int, object]:
    """Run one request through the guard → (status, the edge's parse the app found in its scope)."""
    from serving.multipart import SCOPE_KEY

    seen: dict = {}

    async def app(scope, receive, send):
        seen["form"] = scope.get(SCOPE_KEY)
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():  # the body, then nothing until the request is over (the client stays)
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "path": path, "method": "POST",
             "headers": [(b"content-type", b"multipart/form-data; boundary=XyZ")]}
    asyncio.run(UploadGuard(app)(scope, receive, send))
    return sent[0]["status"], seen.get("form")


@pytest.mark.parametrize("prefix", [b"", b"\r\n"])  # a leading CRLF: not plainly formed, read by the strict parser
def test_the_edge_hands_its_parse_to_the_app(prefix):
    body = prefix + multipart(("images", "a.png", b"\x89PNG-1"), ("images", "b.png", b"\x89PNG-22"), ("k", None, b"4"))
    status, form = parsed_by_edge("/search_batch", body)
    assert status == 200 and form.files == {"images": [b"\x89PNG-1", b"\x89PNG-22"]} and form.texts == {"k": "4"}


def test_a_large_body_is_parsed_off_the_event_loop_and_handed_on_too():
    """Over 64 KiB the edge parses in a worker thread; the app gets the same parse."""
    big = bytes(range(256)) * 400
    status, form = parsed_by_edge("/embed", multipart(("image", "a.png", big)))
    assert status == 200 and form.files == {"image": [big]}


def test_routes_without_uploads_get_no_parse():
    assert parsed_by_edge("/info", b"")[1] is None


# -- routes, reading slots and body deadlines (the edge's bounds; a real server: tests/serving/test_edge_bounds.py)

def _router():
    """A stand-in for the served app's router (Starlette puts the app in the scope): GET, POST and static routes."""
    from starlette.applications import Starlette
    from starlette.routing import Mount, Route

    async def nothing(request):  # never called: the router is only matched
        raise AssertionError

    async def files(scope, receive, send):
        raise AssertionError

    return Starlette(routes=[Route("/info", nothing, methods=["GET"]), Route("/embed", nothing, methods=["POST"]),
                             Route("/items/{item_id}/thumbnail", nothing, methods=["GET"]),
                             Mount("/static_content", app=files)])


class Client:
    """One request to a shared guard: its body in ``parts`` sent one by one, each after ``gap`` seconds (None:
    the first at once, the rest never); what the app read and what was answered are kept."""

    def __init__(self, path: str, parts: list[bytes], gap: float = 0.0, declared: int | None = None,
                 method: str = "POST", app=None) -> None:
        self.parts, self.gap, self.reads = list(parts), gap, 0
        length = sum(map(len, parts)) if declared is None else declared
        headers = [(b"content-type", b"application/json"), (b"content-length", str(length).encode())]
        self.scope = {"type": "http", "path": path, "method": method, "headers": headers,
                      **({"app": app} if app else {})}
        self.sent: list[dict] = []

    async def receive(self):
        self.reads += 1
        if not self.parts or (self.gap is None and self.reads > 1):
            await asyncio.Event().wait()  # the client stays; nothing more comes
        if self.gap:
            await asyncio.sleep(self.gap)
        part = self.parts.pop(0)
        return {"type": "http.request", "body": part, "more_body": bool(self.parts)}

    async def send(self, message):
        self.sent.append(message)

    @property
    def status(self) -> int | None:
        return self.sent[0]["status"] if self.sent else None

    @property
    def headers(self) -> dict:
        return dict(self.sent[0]["headers"]) if self.sent else {}

    @property
    def error(self) -> str:
        return error(b"".join(m.get("body", b"") for m in self.sent[1:]))


async def answering_app(scope, receive, send):
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def run_guard(guard: UploadGuard, clients: list[Client], then=None, settle: float = 0.05):
    """Start every client's request on ``guard`` at once; after ``settle`` s, run ``then`` (a coroutine function)
    while they are still going; then cancel whatever has not finished."""
    async def main():
        tasks = [asyncio.ensure_future(guard(c.scope, c.receive, c.send)) for c in clients]
        await asyncio.sleep(settle)
        try:
            return await then() if then else None
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    return asyncio.run(main())


@pytest.mark.parametrize("app", [_router(), None])  # no app in the scope: nothing is routed but ROUTES
def test_a_post_to_an_unknown_path_is_404_before_any_body_is_read(app):
    client = Client("/wp-login.php", [b"x"], declared=10**9, app=app)
    run_guard(UploadGuard(answering_app), [client])
    assert client.status == 404 and client.reads == 0, client.sent
    assert "unknown path" in client.error and "/wp-login.php" in client.error and "/embed" in client.error
    assert client.headers[b"connection"] == b"close"


def test_a_post_to_a_get_only_path_is_405_naming_the_methods():
    client = Client("/info", [b"{}"], app=_router())
    run_guard(UploadGuard(answering_app), [client])
    assert client.status == 405 and client.reads == 0 and "GET" in client.error
    assert client.headers[b"allow"] == b"GET, HEAD"


@pytest.mark.parametrize("method,path,status", [
    ("PUT", "/embed", 405), ("DELETE", "/nope", 404), ("PATCH", "/items/3/thumbnail", 405),
    ("GET", "/nope", 200), ("HEAD", "/nope", 200), ("OPTIONS", "/embed", 200),
])
def test_methods_that_send_bodies_need_a_route(method, path, status):
    client = Client(path, [b""], method=method, app=_router())
    run_guard(UploadGuard(answering_app), [client])
    assert client.status == status, client.sent


def test_a_body_not_in_by_the_deadline_is_408_however_it_trickles():
    """A byte every 20 ms never stalls long, but the deadline (0.3 s here) covers the whole body."""
    guard = UploadGuard(answering_app, Limits(body_timeout_s=0.3))
    client = Client("/embed", [b"x"] * 1000, gap=0.02)

    async def wait():
        await asyncio.sleep(0.6)

    run_guard(guard, [client], wait)
    assert client.status == 408 and "BYOL_BODY_TIMEOUT_S" in client.error and "0.3 s" in client.error
    assert 3 <= client.reads < 40 and client.headers[b"connection"] == b"close"  # many reads, one deadline
    assert guard.admission.reading == 0 and guard.admission.inflight == 0


def test_slow_bodies_hold_reading_slots_never_in_flight_ones():
    """One in-flight slot, eight slow bodies: a whole request still gets in (a body in at its first read takes no
    reading slot); past the reading bound a slow body gets the grace (one more read, READING_GRACE_S) and is then
    refused with 503 naming BYOL_MAX_READING; health is never refused."""
    guard = UploadGuard(answering_app, Limits(max_inflight=1, max_reading=8))
    slow = [Client("/embed", [b"x", b"y"], gap=None) for _ in range(8)]
    late, whole = Client("/embed", [b"x", b"y"], gap=None), Client("/search_by_id", [b"{}"])
    health = Client("/readyz", [b"x", b"y"], method="GET", gap=None)

    async def then():
        assert guard.admission.reading == 8 and guard.admission.inflight == 0
        await guard(late.scope, late.receive, late.send)
        await guard(whole.scope, whole.receive, whole.send)
        asyncio.ensure_future(guard(health.scope, health.receive, health.send))
        await asyncio.sleep(0.05)

    run_guard(guard, slow, then)
    assert late.status == 503 and "BYOL_MAX_READING" in late.error and late.headers[b"retry-after"] == b"1"
    assert late.reads == 2 and late.headers[b"connection"] == b"close"  # its first read, then the grace's
    assert whole.status == 200 and health.status is None and health.reads == 2  # waiting for its body, not refused
    assert all(c.status is None for c in slow) and guard.admission.reading == 0


def test_a_full_house_is_503_naming_the_in_flight_variable():
    async def held(scope, receive, send):
        await asyncio.Event().wait()

    guard = UploadGuard(held, Limits(max_inflight=2))
    running = [Client("/search_by_id", [b"{}"]) for _ in range(2)]
    refused = Client("/search_by_id", [b"{}"])

    async def then():
        await guard(refused.scope, refused.receive, refused.send)

    run_guard(guard, running, then)
    assert refused.status == 503 and "BYOL_MAX_INFLIGHT" in refused.error and "2 requests in flight" in refused.error
    assert guard.admission.inflight == 0
