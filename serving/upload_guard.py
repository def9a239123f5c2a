"""An ASGI guard in front of the upload endpoints: odd multipart bodies get a 400, never a 500.

Why: BentoML 1.4.39 parses the multipart form itself, before any of our code runs, and three cases end in a 500:
a file sent under the wrong field name (it tries to JSON-decode the file's bytes), and a *text* value in a file
field, which it treats as a URL and fetches from the server (so ``image=/etc/passwd`` or an internal URL fails
with a 500 — and the service must never fetch URLs or read server-side paths on a client's behalf). The guard reads
only the part headers, answers 400 with the reason, and otherwise hands the buffered body on unchanged.
"""

from __future__ import annotations

import json

from python_multipart.multipart import MultipartParser, parse_options_header

# route → the fields that must be uploaded files
FILE_FIELDS: dict[str, frozenset[str]] = {
    "/embed": frozenset({"image"}), "/embed_batch": frozenset({"images"}), "/search": frozenset({"image"}),
    "/classify": frozenset({"image"}), "/index/add": frozenset({"images"}),
}
MAX_BODY = 256 * 1024 * 1024


def part_problems(body: bytes, boundary: bytes, file_fields: frozenset[str]) -> str | None:
    """The first problem with the parts of a multipart body, or ``None``."""
    headers: list[tuple[bytes, bytes]] = []
    field, value = bytearray(), bytearray()
    parts: list[dict[bytes, bytes]] = []

    def on_header_field(data: bytes, start: int, end: int) -> None:
        field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        value.extend(data[start:end])

    def on_header_end() -> None:
        headers.append((bytes(field).lower(), bytes(value)))
        field.clear()
        value.clear()

    def on_headers_finished() -> None:
        parts.append(dict(headers))
        headers.clear()

    try:
        parser = MultipartParser(boundary, {"on_header_field": on_header_field, "on_header_value": on_header_value,
                                            "on_header_end": on_header_end, "on_headers_finished": on_headers_finished})
        parser.write(body)
        parser.finalize()
    except Exception as exc:
        return f"malformed multipart body: {exc}"
    for part in parts:
        _, options = parse_options_header(part.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode(errors="replace")
        is_file = b"filename" in options
        if name in file_fields and not is_file:
            return (f"field {name!r} must be an uploaded file (a multipart part with a filename), not text; "
                    "the server never fetches URLs or reads server-side paths")
        if is_file and name not in file_fields:
            return f"unexpected file field {name!r}; send the image(s) as {', '.join(sorted(file_fields))!r}"
    return None


class UploadGuard:
    """Pure ASGI middleware (BentoML's ``add_asgi_middleware``)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        fields = FILE_FIELDS.get(scope.get("path", "")) if scope["type"] == "http" else None
        ctype = dict(scope.get("headers") or []).get(b"content-type", b"")
        if fields is None or scope.get("method") != "POST":
            return await self.app(scope, receive, send)
        if not ctype.startswith(b"multipart/form-data"):
            if ctype.split(b";")[0].strip() in (b"", b"application/json"):
                return await self.app(scope, receive, send)  # BentoML validates JSON bodies itself (400)
            return await _reply(send, 415, f"unsupported content type {ctype.decode(errors='replace')!r}: send "
                                           f"the image(s) as multipart/form-data file field(s) "
                                           f"{', '.join(sorted(fields))!r}")
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > MAX_BODY:
                return await _reply(send, 413, f"request body larger than {MAX_BODY} bytes")
            more = message.get("more_body", False)
        body = b"".join(chunks)
        _, options = parse_options_header(ctype)
        boundary = options.get(b"boundary")
        problem = "multipart request without a boundary" if not boundary else part_problems(body, boundary, fields)
        if problem:
            return await _reply(send, 400, problem)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _reply(send, status: int, message: str) -> None:
    """Same body shape BentoML gives other 4xx errors: ``[{"error": msg}]``."""
    payload = json.dumps([{"error": message}]).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
