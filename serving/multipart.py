"""Multipart bodies parsed once, checked and handed on by the edge (:mod:`serving.upload_guard`).

Why the edge parses: BentoML 1.4.39 parses the form itself (Starlette's parser, on the event loop), and several odd
but parseable bodies end in a 500 or worse there — a part without a name or a text field over 1 MiB (Starlette raises
an HTTPException that BentoML turns into a 500), a long filename (BentoML names its temp file after it:
ENAMETOOLONG), a text value in a file field (BentoML *fetches it as a URL*). So the edge parses here, with our bounds
(parts, header and field sizes), refuses what the route does not take with a 4xx naming the problem, and hands on a
canonical body: only the route's fields, filenames replaced by short safe ones, a fresh boundary.

Why it is parsed only once: the edge also hands its parse to the endpoint (:class:`ParsedForm` in the ASGI scope,
:data:`SCOPE_KEY`), and :func:`install` makes BentoML build the endpoint's input from it instead of parsing the body a
second time and spooling every uploaded file to a temp file that the endpoint then reads back (measured: about half
of a 64-image ``/embed_batch`` request's CPU, and one temp file per image). Text fields still go through BentoML's
own validation (the same JSON-or-string rule, the same pydantic errors); a request that reaches BentoML without the
edge's parse (a JSON body, a server without the edge) is parsed by BentoML as before.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import get_args

from python_multipart.multipart import MultipartParser, parse_options_header

from serving.limits import Limits

SCOPE_KEY = "byol.form"  # the edge's ParsedForm in the ASGI scope (a client cannot set scope keys)


class BodyError(Exception):
    """The body cannot be accepted: ``status`` (400, 413) and a message naming the problem."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Form:
    """What one upload route takes: file fields (``many``: several files allowed) and text fields."""

    files: frozenset[str]
    fields: frozenset[str] = frozenset()
    many: bool = False


@dataclass
class Part:
    name: str
    filename: str | None
    data: bytearray | bytes
    header_bytes: int = 0


def boundary_of(content_type: bytes, limits: Limits) -> bytes:
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise BodyError(400, "multipart request without a boundary in its Content-Type")
    if len(boundary) > limits.max_boundary:
        raise BodyError(400, f"multipart boundary of {len(boundary)} bytes (limit {limits.max_boundary})")
    return boundary


def parse(body: bytes, boundary: bytes, limits: Limits) -> list[Part]:
    """Split a multipart body into parts with python-multipart's parser, enforcing the part count and the header and
    text-field sizes; a malformed body is a :class:`BodyError` naming the problem. (A hand-written splitter once sat
    beside it to save ~10 us a part on small bodies; on a 64-image 224-px body it took 14 ms where this takes 2.3:
    the library alone now.)"""
    parts: list[Part] = []
    head: dict[bytes, bytes] = {}
    name, value = bytearray(), bytearray()

    def on_part_begin() -> None:
        if len(parts) >= limits.max_parts:
            raise BodyError(413, f"too many multipart parts: more than {limits.max_parts}")
        head.clear()
        parts.append(Part("", None, bytearray()))

    def on_header_field(data: bytes, start: int, end: int) -> None:
        name.extend(data[start:end])
        _count_header(end - start)

    def on_header_value(data: bytes, start: int, end: int) -> None:
        value.extend(data[start:end])
        _count_header(end - start)

    def _count_header(n: int) -> None:
        parts[-1].header_bytes += n
        if parts[-1].header_bytes > limits.max_part_header_bytes:
            raise BodyError(400, f"multipart part #{len(parts) - 1}: headers longer than "
                                 f"{limits.max_part_header_bytes} bytes")

    def on_header_end() -> None:
        key = bytes(name).lower()
        if key in head:
            raise BodyError(400, f"multipart part #{len(parts) - 1}: duplicate {key.decode(errors='replace')!r} "
                                 "header")
        head[key] = bytes(value)
        name.clear()
        value.clear()

    def on_headers_finished() -> None:
        part = parts[-1]
        disposition, options = parse_options_header(head.get(b"content-disposition", b""))
        if disposition != b"form-data" or not options.get(b"name"):
            raise BodyError(400, f"multipart part #{len(parts) - 1} has no Content-Disposition: form-data with a "
                                 "field name")
        part.name = options[b"name"].decode("utf-8", errors="replace")
        if b"filename" in options:
            part.filename = options[b"filename"].decode("utf-8", errors="replace")

    ended = [0, False]  # parts ended, final boundary seen

    def on_part_end() -> None:
        ended[0] += 1

    def on_end() -> None:
        ended[1] = True

    def on_part_data(data: bytes, start: int, end: int) -> None:
        part = parts[-1]
        part.data.extend(data[start:end])
        if part.filename is None and len(part.data) > limits.max_field_bytes:
            raise BodyError(413, f"field {part.name!r} is longer than {limits.max_field_bytes} bytes")

    callbacks = {"on_part_begin": on_part_begin, "on_header_field": on_header_field,
                 "on_header_value": on_header_value, "on_header_end": on_header_end,
                 "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
                 "on_part_end": on_part_end, "on_end": on_end}
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except BodyError:
        raise
    except Exception as exc:  # python-multipart's own errors: a malformed body
        raise BodyError(400, f"malformed multipart body: {exc}") from None
    if not parts:
        raise BodyError(400, "multipart body without any part")
    if ended[0] != len(parts) or not ended[1]:
        raise BodyError(400, "malformed multipart body: it ends before its closing boundary (truncated upload?)")
    return parts


def check(parts: list[Part], form: Form, limits: Limits) -> None:
    """The parts a route takes, each once (files of a ``many`` route excepted), files as files, text as text."""
    files = [p for p in parts if p.name in form.files]
    for p in parts:
        if p.name in form.files and p.filename is None:
            raise BodyError(400, f"field {p.name!r} must be an uploaded file (a multipart part with a filename), "
                                 "not text; the server never fetches URLs or reads server-side paths")
        if p.filename is not None and p.name not in form.files:
            raise BodyError(400, f"unexpected file field {p.name!r}; send the image(s) as "
                                 f"{', '.join(sorted(form.files))!r}")
        if p.filename is None and p.name not in form.fields:
            allowed = sorted(form.files | form.fields)
            raise BodyError(400, f"unexpected field {p.name!r}; this route takes {', '.join(allowed)}")
    names = [p.name for p in parts if not (form.many and p.name in form.files)]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise BodyError(400, f"field {twice[0]!r} given {names.count(twice[0])} times; it takes one value")
    if len(files) > limits.max_images:
        raise BodyError(413, f"too many images in one request: {len(files)} (limit {limits.max_images})")


def safe_filename(filename: str, i: int) -> str:
    """A short name BentoML can use in its temp file's name: ``upload-<i>`` and a sanitised extension."""
    ext = os.path.splitext(os.path.basename(filename.replace("\\", "/")))[1]
    ext = ext if re.fullmatch(r"\.[A-Za-z0-9]{1,8}", ext) else ""
    return f"upload-{i}{ext}"


def rebuild(parts: list[Part]) -> tuple[bytes, bytes]:
    """A canonical body of ``parts`` (safe filenames, no extra headers) and its new boundary."""
    while True:
        boundary = b"byol-" + secrets.token_hex(16).encode()
        if not any(boundary in p.data for p in parts):
            break
    out = bytearray()
    for i, p in enumerate(parts):
        disposition = f'form-data; name="{_quote(p.name)}"'
        if p.filename is not None:
            disposition += f'; filename="{safe_filename(p.filename, i)}"'
        out += b"--" + boundary + b"\r\nContent-Disposition: " + disposition.encode() + b"\r\n"
        if p.filename is not None:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + p.data + b"\r\n"
    out += b"--" + boundary + b"--\r\n"
    return bytes(out), boundary


def _quote(name: str) -> str:
    return name.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "").replace("\n", "")


SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _canonical(parts: list[Part], content_type: bytes) -> bool:
    """Whether BentoML can take the body as it is: plain filenames, no Content-Type parameter but the boundary
    (a ``charset`` would make Starlette decode field names differently from this check)."""
    _, options = parse_options_header(content_type)
    return set(options) <= {b"boundary"} and all(p.filename is None or SAFE_NAME.fullmatch(p.filename)
                                                  for p in parts)


@dataclass(frozen=True)
class ParsedForm:
    """A checked multipart body as the endpoint takes it: each file field's uploads (bytes, in upload order, named
    ``upload-<part number>``: nothing reads those names) and each text field's value."""

    files: dict[str, list[bytes]] = field(default_factory=dict)
    names: dict[str, list[str]] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, parts: list[Part]) -> ParsedForm:
        form = cls()
        for i, p in enumerate(parts):
            if p.filename is None:
                form.texts[p.name] = p.data.decode("utf-8", errors="replace")
            else:
                form.files.setdefault(p.name, []).append(bytes(p.data))
                form.names.setdefault(p.name, []).append(f"upload-{i}")
        return form

    def model_input(self, model) -> dict:
        """The input BentoML's multipart reader would give the endpoint's pydantic ``model``
        (``_bentoml_impl.serde.MultipartSerde.parse_request``): text values JSON-decoded when they are JSON, else
        strings; file fields as paths — names only, nothing is written: the endpoint takes the bytes from here."""
        from _bentoml_sdk.typing_utils import is_list_type, is_union_type

        data: dict = {}
        for name, names in self.names.items():
            if name not in model.multipart_fields:
                continue
            annotation = model.model_fields[name].annotation
            if is_union_type(annotation):
                annotation = get_args(annotation)[0]
            paths = [PurePosixPath(n) for n in names]
            data[name] = paths if is_list_type(annotation) else paths[0]
        for name, value in self.texts.items():
            try:
                data[name] = json.loads(value)
            except json.JSONDecodeError:
                data[name] = value
        return data


def prepare(body: bytes, content_type: bytes, form: Form, limits: Limits) -> tuple[bytes, bytes, ParsedForm]:
    """Body + Content-Type → (the body BentoML gets, its Content-Type, the parse); raises :class:`BodyError`. A body
    that passes the checks and is canonical already goes on byte for byte; any other is rewritten."""
    parts = parse(body, boundary_of(content_type, limits), limits)
    check(parts, form, limits)
    parsed = ParsedForm.of(parts)
    if _canonical(parts, content_type):
        return body, content_type, parsed
    new_body, boundary = rebuild(parts)
    return new_body, b"multipart/form-data; boundary=" + boundary, parsed


def install() -> bool:
    """Make BentoML's multipart reader take the edge's parse when the request has one (the entry point,
    ``serving/service.py``, calls this before the app is built, as it does ``serving.deadline.install``). Returns
    whether BentoML had the reader to wrap; without it BentoML parses every body itself, as before."""
    try:
        from _bentoml_impl import serde
    except ImportError:
        return False
    base = serde.ALL_SERDE.get("multipart/form-data")
    if base is None or getattr(base, "byol_parsed", False):
        return base is not None

    class EdgeParsedSerde(base):
        byol_parsed = True

        async def parse_request(self, request, cls):
            parsed = request.scope.get(SCOPE_KEY)
            if parsed is None:
                return await super().parse_request(request, cls)
            return cls.model_validate(parsed.model_input(cls))

    serde.ALL_SERDE["multipart/form-data"] = EdgeParsedSerde
    return True


def json_problem(body: bytes, form: Form, limits: Limits) -> BodyError | None:
    """A JSON body on an upload route goes to BentoML (which answers 400: a string is no image), but a list of a
    million strings would make it write a million temp files first: bound the file fields' lengths here."""
    try:
        obj = json.loads(body) if body.strip() else {}
    except RecursionError:
        return BodyError(400, "JSON body nested too deeply")
    except ValueError as exc:
        return BodyError(400, f"invalid JSON body: {exc}")
    for name in form.files:
        value = obj.get(name) if isinstance(obj, dict) else None
        if isinstance(value, list) and len(value) > limits.max_images:
            return BodyError(413, f"too many images in one request: {len(value)} (limit {limits.max_images})")
    return None


def part_problems(body: bytes, boundary: bytes, file_fields: frozenset[str], limits: Limits | None = None
                  ) -> str | None:
    """The first problem with the parts of a multipart body, or ``None`` (file fields checked; text fields free)."""
    limits = limits or Limits()
    try:
        parts = parse(body, boundary, limits)
        texts = frozenset(p.name for p in parts if p.filename is None and p.name not in file_fields)
        check(parts, Form(file_fields, texts, many=True), limits)
    except BodyError as exc:
        return exc.message
    return None
