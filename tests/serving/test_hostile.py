"""Hostile requests against a real server (one for the module): each is answered with the right status class and a
body naming the problem, and the server still embeds a normal image right after.

Limits are lowered for the module (``BYOL_MAX_INFLIGHT=4``, 4 MiB bodies, a 4 Mpx pixel budget per request) so the
cases stay small; the rules are the same at the defaults.
"""

from __future__ import annotations

import io
import json
import socket
import struct
import time
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import sample_images
from tests.serving import server as srv

pytestmark = pytest.mark.slow
TOKEN = "hostile-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ENV = {"BYOL_ADMIN_TOKEN": TOKEN, "BYOL_MAX_INFLIGHT": "4", "BYOL_MAX_BODY_BYTES": str(4 * 2**20),
       "BYOL_MAX_REQUEST_PIXELS": "4000000", "BYOL_MAX_REMOVE": "100", "BYOL_MAX_READING": "4"}
B = "hostile-boundary"


@pytest.fixture(scope="module")
def live(registered_bundle):
    with srv.live(registered_bundle, ENV) as state:
        yield state


GOOD = srv.png(sample_images(1)[0])


def png(w: int, h: int, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h)).save(buf, "PNG")
    return buf.getvalue()


def png_header(w: int, h: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + chunk(b"IEND", b"")


def icon_with_png_frame(frame: bytes) -> bytes:
    """An ICO whose directory claims a 256x256 frame, the frame being any PNG (Pillow decodes it inside open)."""
    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(frame), 22) + frame


def gif_screen(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("P", (4, 4)).save(buf, "GIF")
    data = bytearray(buf.getvalue())
    data[6:10] = struct.pack("<HH", w, h)
    return bytes(data)


def multipart(*parts: tuple[str, str | None, bytes], boundary: str = B, extra: bytes = b"") -> bytes:
    out = b""
    for name, filename, content in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n".encode() + extra + b"\r\n" + content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def raw(port: int, head: bytes, body: bytes = b"", wait: float = 30.0) -> tuple[int, bytes, dict]:
    """Send bytes on a fresh connection; read one response → (status, body, headers)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(head + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        top, _, rest = data.partition(b"\r\n\r\n")
        lines = top.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            rest += chunk
    return int(lines[0].split()[1]), rest, headers


def post_head(path: str, length: int, ctype: str = f"multipart/form-data; boundary={B}", extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\nContent-Length: {length}\r\n{extra}"
            "\r\n").encode()


MP = {"headers": {"content-type": f"multipart/form-data; boundary={B}"}}


def _chunks(total: int):
    for _ in range(total // 2**20):
        yield b"x" * 2**20


# name → (request: live → httpx.Response | (status, body, headers), expected status, text the error must contain)
CASES = {
    # -- size and shape of the body
    "declared body over the limit": (lambda L: raw(L["port"], post_head("/embed", 10**9)), 413, "over the limit"),
    "streamed body over the limit": (lambda L: L["http"].post("/embed", content=_chunks(6 * 2**20), **MP), 413,
                                     "larger than the limit"),
    "too many multipart parts": (lambda L: L["http"].post(
        "/search", content=multipart(*[("k", None, b"1")] * 1000), **MP), 413, "too many multipart parts"),
    "too many images": (lambda L: L["http"].post(
        "/embed_batch", files=[("images", ("a.png", GOOD))] * 257), 413, "too many images"),
    "JSON list of 100k images": (lambda L: L["http"].post("/embed_batch", json={"images": ["x"] * 100_000}), 413,
                                 "too many images"),
    "JSON of 2 MB on an upload route": (lambda L: L["http"].post(
        "/embed", content=b"[" * 10**6 + b"]" * 10**6, headers={"content-type": "application/json"}), 413,
        "json body"),
    "JSON nested deep on an admin route": (lambda L: L["http"].post(
        "/index/remove", content=b"[" * 50_000 + b"]" * 50_000, headers={**AUTH, "content-type": "application/json"}),
        400, "nested too deeply"),
    "invalid JSON": (lambda L: L["http"].post(
        "/index/remove", content=b'{"ids": [1,', headers={**AUTH, "content-type": "application/json"}), 400,
        "invalid json"),
    "text field over the field limit": (lambda L: L["http"].post(
        "/search", files={"image": ("a.png", GOOD)}, data={"k": "1" * 300_000}), 413, "longer than"),
    "part header over the limit": (lambda L: L["http"].post(
        "/embed", content=multipart(("image", "a.png", GOOD), extra=b"X-Junk: " + b"j" * 9000 + b"\r\n"), **MP),
        400, "header"),
    "part without a field name": (lambda L: L["http"].post(
        "/embed", content=multipart(("", "a.png", GOOD)).replace(b'name=""; ', b""), **MP), 400, "field name"),
    "body cut before its closing boundary": (lambda L: L["http"].post(
        "/embed", content=multipart(("image", "a.png", GOOD))[:-12], **MP), 400, "closing boundary"),
    "no boundary": (lambda L: L["http"].post(
        "/embed", content=b"--x--", headers={"content-type": "multipart/form-data"}), 400, "boundary"),
    "boundary of 500 bytes": (lambda L: L["http"].post(
        "/embed", content=multipart(("image", "a.png", GOOD), boundary="b" * 500),
        headers={"content-type": "multipart/form-data; boundary=" + "b" * 500}), 400, "boundary"),
    "garbage before the first boundary": (lambda L: L["http"].post(
        "/embed", content=b"garbage" + multipart(("image", "a.png", GOOD)), **MP), 400, "malformed multipart"),
    # -- fields
    "the same field twice": (lambda L: L["http"].post(
        "/embed", content=multipart(("image", "a.png", GOOD), ("image", "b.png", GOOD)), **MP), 400,
        "given 2 times"),
    "an unknown text field": (lambda L: L["http"].post(
        "/embed", files={"image": ("a.png", GOOD)}, data={"debug": "1"}), 400, "unexpected field 'debug'"),
    "a file in a text field": (lambda L: L["http"].post(
        "/search", files=[("image", ("a.png", GOOD)), ("k", ("k.txt", b"3"))]), 400, "unexpected file field 'k'"),
    "a URL in a file field": (lambda L: L["http"].post(
        "/embed", content=multipart(("image", None, b"http://169.254.169.254/latest/meta-data")), **MP), 400,
        "never fetches urls"),
    "url-encoded form": (lambda L: L["http"].post("/embed", data={"image": "/etc/passwd"}), 415,
                         "multipart/form-data"),
    # -- headers
    "two different Content-Type headers": (lambda L: L["http"].post(
        "/embed", content=multipart(("image", "a.png", GOOD)),
        headers=[("content-type", "application/json"), ("content-type", f"multipart/form-data; boundary={B}")]),
        400, "conflicting content-type"),
    "Content-Length with Transfer-Encoding": (lambda L: raw(
        L["port"], post_head("/index/remove", 2, "application/json",
                             f"Authorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n"), b"0\r\n\r\n"),
        400, "transfer-encoding"),
    # -- admin
    "admin route without a token, 1 GB declared": (lambda L: raw(L["port"], post_head("/index/add", 10**9)), 401,
                                                     "bearer token"),
    "admin route with a wrong token": (lambda L: L["http"].post(
        "/admin/reload", json={}, headers={"Authorization": "Bearer nope"}), 401, "bearer token"),
    "admin route with a Basic scheme": (lambda L: L["http"].post(
        "/index/remove", json={"uris": ["x"]}, headers={"Authorization": f"Basic {TOKEN}"}), 401, "bearer token"),
    "two Authorization headers": (lambda L: L["http"].post(
        "/index/remove", json={"uris": ["x"]}, headers=[("authorization", f"Bearer {TOKEN}")] * 2), 400,
        "authorization headers"),
    "remove by ids without a version": (lambda L: L["http"].post(
        "/index/remove", json={"ids": [1]}, headers=AUTH), 400, "'version' is required"),
    "remove ids of another version": (lambda L: L["http"].post(
        "/index/remove", json={"ids": [1], "version": "19990101-000000-00000000"}, headers=AUTH), 409,
        "version mismatch"),
    "remove an id beyond int64": (lambda L: L["http"].post(
        "/index/remove", json={"ids": [2**70], "version": L["version"]}, headers=AUTH), 400, "out of range"),
    "remove ids that are not integers": (lambda L: L["http"].post(
        "/index/remove", json={"ids": ["one"], "version": L["version"]}, headers=AUTH), 400, "validation error"),
    "remove too many": (lambda L: L["http"].post(
        "/index/remove", json={"uris": ["x"] * 101}, headers=AUTH), 413, "too many items"),
    "remove nothing": (lambda L: L["http"].post("/index/remove", json={}, headers=AUTH), 400, "nothing to remove"),
    "reload a path": (lambda L: L["http"].post("/admin/reload", json={"version": "../../etc"}, headers=AUTH), 400,
                      "bad bundle tag"),
    "reload an unknown version": (lambda L: L["http"].post(
        "/admin/reload", json={"version": "19990101-000000-deadbeef"}, headers=AUTH), 404, "no bundle"),
    "labels that are no list": (lambda L: L["http"].post(
        "/index/add", files=[("images", ("a.png", GOOD))], data={"labels": "shoe"}, headers=AUTH), 400,
        "validation error"),
    "a label of 5000 characters": (lambda L: L["http"].post(
        "/index/add", files=[("images", ("a.png", GOOD))], data={"labels": json.dumps(["x" * 5000])},
        headers=AUTH), 400, "longer than"),
    # -- parameters
    "k of zero": (lambda L: L["http"].post("/search", files={"image": ("a.png", GOOD)}, data={"k": "0"}), 400,
                  "k must be"),
    "k of 10^30": (lambda L: L["http"].post("/search", files={"image": ("a.png", GOOD)}, data={"k": "1" + "0" * 30}),
                   400, "k must be"),
    "unknown classify method": (lambda L: L["http"].post(
        "/classify", files={"image": ("a.png", GOOD)}, data={"method": "os.system"}), 400, "'probe' or 'knn'"),
    # -- images
    "icon with a 5000x5000 PNG frame": (lambda L: L["http"].post(
        "/embed", files={"image": ("i.ico", icon_with_png_frame(png(5000, 5000)))}), 400, "icon frame of 5000x5000"),
    "PNG header of 30000x30000": (lambda L: L["http"].post(
        "/embed", files={"image": ("a.png", png_header(30000, 30000))}), 400, "too large"),
    "GIF screen of 65535x65535": (lambda L: L["http"].post(
        "/embed", files={"image": ("a.gif", gif_screen(65535, 65535))}), 400, "too large"),
    "request over the pixel budget": (lambda L: L["http"].post(
        "/embed_batch", files=[("images", ("a.png", png(1500, 1500)))] * 2), 413, "pixel budget"),
}


def status_body(resp) -> tuple[int, str]:
    if isinstance(resp, tuple):
        return resp[0], resp[1].decode(errors="replace")
    return resp.status_code, resp.text


def embeds(live) -> None:
    r = live["http"].post("/embed", files={"image": ("ok.png", GOOD)})
    assert r.status_code == 200 and r.json()["version"] == live["version"], r.text


def test_there_are_at_least_30_hostile_cases():
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_request_is_refused_with_a_named_problem_and_the_server_keeps_serving(live, case):
    send, status, needle = CASES[case]
    code, body = status_body(send(live))
    assert code == status, f"{case}: {code} {body[:300]}"
    assert needle.lower() in body.lower(), f"{case}: {body[:300]}"
    embeds(live)


@pytest.mark.parametrize("filename", ["a" * 300 + ".png", "../../../../etc/passwd", "x" * 240 + "." + "y" * 40,
                                      "café ☕.png", "a\x01b.png"])
def test_odd_filenames_are_sanitised_and_embedded(live, filename):
    """BentoML names its temp file after the upload: a 300-character name used to fail with ENAMETOOLONG (500)."""
    body = multipart(("image", "PLACEHOLDER", GOOD)).replace(b"PLACEHOLDER", filename.encode())
    r = live["http"].post("/embed", content=body, **MP)
    assert r.status_code == 200, r.text
    embeds(live)


def test_a_charset_parameter_cannot_change_how_fields_are_named(live):
    r = live["http"].post("/search", content=multipart(("image", "a.png", GOOD), ("k", None, b"2")),
                          headers={"content-type": f"multipart/form-data; boundary={B}; charset=utf-16"})
    assert r.status_code == 200 and len(r.json()["results"]) <= 2, r.text


def test_retried_add_returns_the_same_id_and_duplicates_in_one_request_share_it(live):
    image = srv.png(np.random.default_rng(1234).integers(0, 256, (28, 28, 3), dtype=np.uint8))
    first = live["http"].post("/index/add", files=[("images", ("a.png", image))] * 2, headers=AUTH)
    again = live["http"].post("/index/add", files=[("images", ("b.png", image))], headers=AUTH)
    assert first.status_code == again.status_code == 200, (first.text, again.text)
    (a, b), (c,) = first.json()["ids"], again.json()["ids"]
    assert a == b == c
    r = live["http"].post("/index/remove", json={"ids": [a], "version": first.json()["version"]}, headers=AUTH)
    assert r.json()["removed"] == 1


def info(live) -> dict:
    return live["http"].get("/info").json()["admission"]


def wait_for(live, pred, what: str, seconds: float = 60.0) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        stats = info(live)
        if pred(stats):
            return stats
        time.sleep(0.05)
    raise AssertionError(f"never saw {what}: {info(live)}")


def test_overload_is_a_503_with_retry_after_then_the_server_recovers(live):
    """BYOL_MAX_READING=4: four uploads that never finish hold the four reading slots (no in-flight slot: a whole
    request is still answered); the fifth slow body is refused at once with 503 + Retry-After naming the bound,
    and once they are gone the server answers again."""
    head = post_head("/embed", 100_000)
    stuck = [socket.create_connection(("127.0.0.1", live["port"])) for _ in range(4)]
    try:
        for s in stuck:
            s.sendall(head + b"--" + B.encode())
        wait_for(live, lambda a: a["reading"] == 4 and a["inflight"] == 0, "4 bodies being read")
        code, body, headers = raw(live["port"], head, b"--" + B.encode())
        assert code == 503 and b"BYOL_MAX_READING" in body and headers["retry-after"] == "1", body
        embeds(live)
        assert live["http"].get("/readyz").status_code == 200  # health and readiness are never refused
    finally:
        for s in stuck:
            s.close()
    wait_for(live, lambda a: a["reading"] == 0, "the slots given back")
    embeds(live)


def test_a_client_leaving_mid_upload_frees_its_slot(live):
    with socket.create_connection(("127.0.0.1", live["port"])) as s:
        s.sendall(post_head("/index/add", 50_000, extra=f"Authorization: Bearer {TOKEN}\r\n") + b"--" + B.encode())
        wait_for(live, lambda a: a["reading"] == 1, "the upload being read")
    wait_for(live, lambda a: a["reading"] == 0 and a["inflight"] == 0, "its slot given back")
    embeds(live)


def test_a_read_request_whose_client_left_is_cancelled(live):
    """The work of a request whose client disconnected is skipped (its decoding and model call are cancelled)."""
    big = [("images", (f"{i}.png", png(1400, 1400, "RGB"))) for i in range(2)]
    request = httpx.Request("POST", live["server"].url + "/embed_batch", files=big)
    body = request.read()
    head = post_head("/embed_batch", len(body), request.headers["content-type"])
    before = info(live)["cancelled_on_disconnect"]
    for _ in range(20):  # the client closes as soon as it has sent; the server must still be working then
        with socket.create_connection(("127.0.0.1", live["port"])) as s:
            s.sendall(head + body)
        wait_for(live, lambda a: a["inflight"] == 0, "the request finished or cancelled")
        if info(live)["cancelled_on_disconnect"] > before:
            break
    assert info(live)["cancelled_on_disconnect"] > before
    embeds(live)
