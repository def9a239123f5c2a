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
    assert call("/info", b"anything", ctype=b"text/plain")[0] == 200
    assert call("/embed", b"", method="GET")[0] == 200


def test_a_body_over_the_limit_is_413():
    status, body, received = call("/embed", multipart(("image", "a.png", b"x" * 200)), chunk=50,
                                  limits=Limits(max_body=100))
    assert status == 413 and "100 bytes" in error(body) and received is None


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
