"""serving.multipart: python-multipart's parser with our bounds reads well-formed bodies into their parts and refuses
malformed ones naming the problem, and the edge's parse becomes the endpoint's input the way BentoML's own multipart
reader would make it."""

from __future__ import annotations

from pathlib import PurePosixPath

import httpx
import pytest

from serving.limits import Limits
from serving.multipart import BodyError, Form, ParsedForm, parse, prepare

B = b"XyZ-boundary"
LIMITS = Limits()


def body(*parts: tuple[str, str | None, bytes], headers: bytes = b"", tail: bytes = b"\r\n") -> bytes:
    out = b""
    for name, filename, content in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += b"--" + B + b"\r\nContent-Disposition: " + disp.encode() + b"\r\n" + headers + b"\r\n" + content
        out += b"\r\n"
    return out + b"--" + B + b"--" + tail


def parts_of(data: bytes):
    return [(p.name, p.filename, bytes(p.data)) for p in parse(data, B, LIMITS)]


WELL_FORMED = {  # what each body was made of → what parse must give back
    "one file": [("image", "a.png", b"\x89PNG\r\n\x1a\n...")],
    "file and text": [("image", "a.png", b"\x00\xff" * 50), ("k", None, b"5")],
    "many files": [("images", f"{i}.png", bytes([i]) * i) for i in range(20)],
    "empty file": [("image", "a.png", b"")],
    "CRLFs and dashes in the data": [("image", "a.png", b"\r\n\r\n--\r\n--XyZ-boundar\r\n-"), ("k", None, b"")],
    "odd but quoted filename": [("image", 'we"ird\\name.png', b"x")],
    "utf-8 field and file names": [("café", "ça.png", b"x")],
}
REFUSED = {  # malformed or over a bound: a BodyError naming the problem
    "no disposition": (body(("image", "a.png", b"x")).replace(b"Content-Disposition", b"Content-Dispositio"),
                       "no Content-Disposition"),
    "no name": (body(("image", "a.png", b"x")).replace(b'name="image"; ', b""), "no Content-Disposition"),
    "duplicate header": (body(("image", "a.png", b"x"), headers=b"Content-Disposition: form-data; name=\"k\"\r\n"),
                         "duplicate"),
    "truncated": (body(("image", "a.png", b"x"))[:-10], "closing boundary"),
    "long header": (body(("image", "a.png", b"x"), headers=b"X-Junk: " + b"j" * 9000 + b"\r\n"), "header"),
    "text field over the limit": (body(("k", None, b"1" * (LIMITS.max_field_bytes + 1))), "longer than"),
    "too many parts": (body(*[("k", None, b"1")] * (LIMITS.max_parts + 1)), "too many multipart parts"),
}


@pytest.mark.parametrize("case", list(WELL_FORMED))
def test_a_well_formed_body_parses_into_its_parts(case):
    made = WELL_FORMED[case]
    assert parts_of(body(*made)) == made
    assert parts_of(body(*made, tail=b"")) == made  # no CRLF after the closing delimiter
    assert parts_of(body(*made, headers=b"Content-Type: image/png\r\n")) == made


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_malformed_body_is_refused_naming_the_problem(case):
    data, problem = REFUSED[case]
    with pytest.raises(BodyError, match=problem):
        parse(data, B, LIMITS)


def test_a_body_httpx_builds_is_read_in_upload_order():
    request = httpx.Request("POST", "http://x/embed_batch", files=[("images", (f"{i}.png", b"\x89PNG" * i))
                                                                   for i in range(5)], data={"k": "3"})
    data, boundary = request.read(), request.headers["content-type"].split("boundary=")[1].encode()
    parts = parse(data, boundary, LIMITS)
    assert [p.name for p in parts] == ["k"] + ["images"] * 5
    assert [bytes(p.data) for p in parts[1:]] == [b"\x89PNG" * i for i in range(5)]


def test_the_edge_parse_becomes_the_input_bentoml_would_make():
    """Files as names in upload order (their bytes stay in the parse), text as JSON when it is JSON."""
    data = body(("images", "a.png", b"1"), ("labels", None, b'["x", "y"]'), ("images", "../b.PNG", b"22"),
                ("k", None, b"7"), ("method", None, b"knn"))
    form = Form(frozenset({"images"}), frozenset({"labels", "k", "method"}), many=True)
    _, _, parsed = prepare(data, b"multipart/form-data; boundary=" + B, form, LIMITS)
    assert parsed.files == {"images": [b"1", b"22"]} and parsed.texts["k"] == "7"

    class Model:  # what BentoML's IO model exposes
        multipart_fields = ["images"]
        model_fields = {"images": type("F", (), {"annotation": list[PurePosixPath]})()}

    got = parsed.model_input(Model)
    assert got["images"] == [PurePosixPath("upload-0"), PurePosixPath("upload-2")]
    assert (got["labels"], got["k"], got["method"]) == (["x", "y"], 7, "knn")


def test_a_single_file_field_is_given_as_one_path():
    parsed = ParsedForm(files={"image": [b"x"]}, names={"image": ["upload-0.png"]})

    class Model:
        multipart_fields = ["image"]
        model_fields = {"image": type("F", (), {"annotation": PurePosixPath})()}

    assert parsed.model_input(Model) == {"image": PurePosixPath("upload-0.png")}
