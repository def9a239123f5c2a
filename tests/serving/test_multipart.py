"""serving.multipart: the plain split reads a body exactly as python-multipart's strict parser does (or declines it),
and the edge's parse becomes the endpoint's input the way BentoML's own multipart reader would make it."""

from __future__ import annotations

import random
from pathlib import PurePosixPath

import httpx
import pytest

from serving.limits import Limits
from serving.multipart import Form, ParsedForm, parse, parse_strict, prepare, split_plain

B = b"XyZ-boundary"
LIMITS = Limits()


def body(*parts: tuple[str, str | None, bytes], headers: bytes = b"", tail: bytes = b"\r\n") -> bytes:
    out = b""
    for name, filename, content in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += b"--" + B + b"\r\nContent-Disposition: " + disp.encode() + b"\r\n" + headers + b"\r\n" + content
        out += b"\r\n"
    return out + b"--" + B + b"--" + tail


def strict(data: bytes):
    try:
        return [(p.name, p.filename, bytes(p.data)) for p in parse_strict(data, B, LIMITS)]
    except Exception as exc:  # BodyError: the strict parser refuses it
        return type(exc).__name__


def plain(data: bytes):
    parts = split_plain(data, B, LIMITS)
    return None if parts is None else [(p.name, p.filename, bytes(p.data)) for p in parts]


WELL_FORMED = {
    "one file": body(("image", "a.png", b"\x89PNG\r\n\x1a\n...")),
    "file and text": body(("image", "a.png", b"\x00\xff" * 50), ("k", None, b"5")),
    "many files": body(*[("images", f"{i}.png", bytes([i]) * i) for i in range(20)]),
    "empty file": body(("image", "a.png", b"")),
    "CRLFs and dashes in the data": body(("image", "a.png", b"\r\n\r\n--\r\n--XyZ-boundar\r\n-"), ("k", None, b"")),
    "a Content-Type header": body(("image", "a.png", b"x"), headers=b"Content-Type: image/png\r\n"),
    "no tail CRLF": body(("image", "a.png", b"x"), tail=b""),
    "odd but quoted filename": body(("image", 'we"ird\\name.png', b"x")),
    "utf-8 field and file names": body(("café", "ça.png", b"x")),
}
DECLINED = {  # the plain split leaves these to the strict parser (which refuses most of them, with its message)
    "preamble": b"junk\r\n" + body(("image", "a.png", b"x")),
    "epilogue": body(("image", "a.png", b"x"), tail=b"\r\nepilogue"),
    "a delimiter inside the data": body(("image", "a.png", b"a\r\n--XyZ-boundary--\r\nb")),
    "delimiter followed by padding": body(("image", "a.png", b"x")).replace(B + b"\r\n", B + b" \r\n", 1),
    "no disposition": body(("image", "a.png", b"x")).replace(b"Content-Disposition", b"Content-Dispositio"),
    "no name": body(("image", "a.png", b"x")).replace(b'name="image"; ', b""),
    "duplicate header": body(("image", "a.png", b"x"), headers=b"Content-Disposition: form-data; name=\"k\"\r\n"),
    "bad header name": body(("image", "a.png", b"x"), headers=b"X Bad: 1\r\n"),
    "truncated": body(("image", "a.png", b"x"))[:-10],
    "empty message": b"--" + B + b"--\r\n",
    "no headers": b"--" + B + b"\r\n\r\nx\r\n--" + B + b"--\r\n",
    "long header": body(("image", "a.png", b"x"), headers=b"X-Junk: " + b"j" * 9000 + b"\r\n"),
    "text field over the limit": body(("k", None, b"1" * (LIMITS.max_field_bytes + 1))),
    "too many parts": body(*[("k", None, b"1")] * (LIMITS.max_parts + 1)),
}


@pytest.mark.parametrize("case", list(WELL_FORMED))
def test_a_well_formed_body_is_split_plainly_into_what_the_strict_parser_reads(case):
    data = WELL_FORMED[case]
    assert plain(data) is not None and plain(data) == strict(data)


@pytest.mark.parametrize("case", list(DECLINED))
def test_an_unusual_body_is_left_to_the_strict_parser(case):
    assert plain(DECLINED[case]) is None


def test_a_body_httpx_builds_takes_the_plain_path():
    request = httpx.Request("POST", "http://x/embed_batch", files=[("images", (f"{i}.png", b"\x89PNG" * i))
                                                                   for i in range(5)], data={"k": "3"})
    data, boundary = request.read(), request.headers["content-type"].split("boundary=")[1].encode()
    parts = split_plain(data, boundary, LIMITS)
    assert parts is not None and [p.name for p in parts] == ["k"] + ["images"] * 5
    assert [bytes(p.data) for p in parts[1:]] == [b"\x89PNG" * i for i in range(5)]


def test_random_damage_never_makes_the_plain_split_disagree_with_the_strict_parser():
    """Bytes inserted, deleted or changed anywhere: the plain split declines, or reads what the strict one reads."""
    rng = random.Random(20261129)
    bases = list(WELL_FORMED.values())
    pieces = [b"\r\n", b"--", b"--" + B, b"\r\n--" + B + b"\r\n", b":", b'"', b";", b" ", b"\r", b"\n", b"x"]
    taken = 0
    for _ in range(3000):
        data = bytearray(rng.choice(bases))
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(data) + 1)
            what = rng.random()
            if what < 0.4:
                data[at:at] = rng.choice(pieces)
            elif what < 0.7:
                del data[at:at + rng.randint(1, 4)]
            elif at < len(data):
                data[at] = rng.randrange(256)
        got = plain(bytes(data))
        if got is not None:
            taken += 1
            assert got == strict(bytes(data)), bytes(data)
    assert taken > 100  # the comparison ran on damaged bodies the plain split still accepted


def test_parse_reads_both_kinds():
    assert [p.name for p in parse(WELL_FORMED["file and text"], B, LIMITS)] == ["image", "k"]
    with pytest.raises(Exception, match="closing boundary"):
        parse(DECLINED["truncated"], B, LIMITS)


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
