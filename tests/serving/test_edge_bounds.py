"""The edge's bounds against a real server, attacked the way the issue found them open (one server for the module):

* thousands of GETs to distinct unknown paths leave ``/metrics`` exactly as many series as before (one constant
  label, ``/{unrouted}``, counts them all), where each path used to add its own set of series;
* more clients than in-flight slots that send headers and then a byte now and then: a whole request is still
  answered 200 while they trickle, each trickler gets 408 once the body deadline passes, and past the reading bound
  the next one is refused with 503 naming ``BYOL_MAX_READING``;
* a POST to an unknown path declaring a large body gets 404 at once, without the body being sent.

Bounds lowered for the module: 4 in-flight slots, 8 reading slots, a 3 s body deadline.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serving.metrics import UNROUTED
from serving.upload_guard import ROUTES
from tests.conftest import sample_images
from tests.serving import server as srv

pytestmark = pytest.mark.slow
INFLIGHT, READING, DEADLINE_S = 4, 8, 6  # 6 s: room for a busy CI box to set the tricklers up
ENV = {"BYOL_MAX_INFLIGHT": str(INFLIGHT), "BYOL_MAX_READING": str(READING), "BYOL_BODY_TIMEOUT_S": str(DEADLINE_S)}
GOOD = srv.png(sample_images(1)[0])
B = "edge-boundary"


@pytest.fixture(scope="module")
def live(registered_bundle):
    with srv.live(registered_bundle, ENV) as state:
        yield state


def embeds(live) -> None:
    r = live["http"].post("/embed", files={"image": ("ok.png", GOOD)})
    assert r.status_code == 200 and r.json()["version"] == live["version"], r.text


def admission(live) -> dict:
    return live["http"].get("/info").json()["admission"]


def series(text: str) -> set[tuple]:
    """Every series of a scrape: (sample name, sorted labels), values left out."""
    return {(s.name, tuple(sorted(s.labels.items()))) for f in text_string_to_metric_families(text) for s in f.samples}


def unrouted_404s(text: str) -> float:
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "bentoml_service_request_total" and s.labels.get("endpoint") == UNROUTED
               and s.labels.get("http_response_code") == "404")


async def distinct_gets(url: str, n: int, clients: int = INFLIGHT - 1) -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        async def some(start: int) -> list[int]:
            return [(await http.get(f"/probe-{i}/x{i % 7}")).status_code for i in range(start, n, clients)]

        return [code for codes in await asyncio.gather(*(some(c) for c in range(clients))) for code in codes]


def test_thousands_of_unknown_paths_add_no_metric_series(live):
    http, n = live["http"], 3000
    assert http.get("/probe-warmup").status_code == 404  # the constant label's own series exist from here on
    assert http.post("/probe-warmup", content=b"{}").status_code == 404
    embeds(live)
    before = http.get("/metrics").text
    t0 = time.monotonic()
    codes = asyncio.run(distinct_gets(live["server"].url, n))
    seconds = time.monotonic() - t0
    after = http.get("/metrics").text
    assert codes == [404] * n
    grown = series(after) - series(before)
    print(f"\n{n} GETs to distinct unknown paths in {seconds:.1f} s: /metrics {len(before.splitlines())} -> "
          f"{len(after.splitlines())} lines, {len(grown)} new series")
    assert not grown, sorted(grown)[:10]
    assert len(after.splitlines()) == len(before.splitlines())
    assert "probe-" not in after
    assert unrouted_404s(after) - unrouted_404s(before) == n  # counted, under one label


def test_known_routes_keep_their_labels(live):
    embeds(live)
    live["http"].get("/items/123456/thumbnail")
    labels = {s.labels.get("endpoint") for f in text_string_to_metric_families(live["http"].get("/metrics").text)
              for s in f.samples if s.name == "bentoml_service_request_total"}
    assert {"/embed", "/info", "/items/{id}/thumbnail"} <= labels, labels


def head(path: str, length: int, ctype: str = f"multipart/form-data; boundary={B}") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\nContent-Length: {length}\r\n"
            "\r\n").encode()


def parse(data: bytes) -> tuple[int, dict, str]:
    top, _, body = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body.decode(errors="replace")


async def trickle(port: int, seconds: float, every: float = 0.25) -> tuple[int | None, str, float]:
    """Send headers declaring 100 kB and a first few bytes, then a byte every ``every`` s until an answer comes (or
    ``seconds`` pass) → (status or None, body, seconds until the answer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.monotonic()
    writer.write(head("/embed", 100_000) + b"--" + B.encode() + b"\r\n")
    await writer.drain()
    data = b""
    try:
        while time.monotonic() - t0 < seconds:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), every)
            except TimeoutError:
                writer.write(b"x")
                await writer.drain()
                continue
            data += chunk
            if not chunk or (b"\r\n\r\n" in data and len(data.partition(b"\r\n\r\n")[2]) >= int(
                    parse(data)[1].get("content-length", 0))):
                break
    except ConnectionError:
        pass
    finally:
        writer.close()
    if not data:
        return None, "", time.monotonic() - t0
    status, _, body = parse(data)
    return status, body, time.monotonic() - t0


async def slow_attack(live) -> dict:
    """More tricklers than in-flight slots; while they trickle a whole /embed and /info; then one trickler more
    than the reading bound; then wait for the deadline."""
    port, out = live["port"], {}
    tricklers = [asyncio.ensure_future(trickle(port, DEADLINE_S + 10)) for _ in range(READING)]
    async with httpx.AsyncClient(base_url=live["server"].url, timeout=60) as http:
        for _ in range(100):  # until every trickler holds a reading slot
            out["admission"] = (await http.get("/info")).json()["admission"]
            if out["admission"].get("reading") == READING:
                break
            await asyncio.sleep(0.05)
        t0 = time.monotonic()
        r = await http.post("/embed", files={"image": ("ok.png", GOOD)})
        out["embed"] = (r.status_code, r.text, time.monotonic() - t0)
        out["late_body"] = await late_body(port, 0.05)
        out["one_more"] = await trickle(port, DEADLINE_S + 10)
    out["tricklers"] = await asyncio.gather(*tricklers)
    return out


async def late_body(port: int, after: float) -> tuple[int | None, str]:
    """A real /embed whose body follows its headers ``after`` seconds later (two writes) → (status, body)."""
    body = (f"--{B}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + GOOD + f"\r\n--{B}--\r\n".encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head("/embed", len(body)))
    await writer.drain()
    await asyncio.sleep(after)
    writer.write(body)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(1 << 20), 30)
    writer.close()
    status, _, text = parse(data)
    return status, text


def test_slow_bodies_cannot_take_the_slots_real_requests_need(live):
    out = asyncio.run(slow_attack(live))
    status, text, seconds = out["embed"]
    print(f"\n/embed answered {status} in {seconds * 1000:.0f} ms while {READING} tricklers held connections "
          f"({INFLIGHT} in-flight slots); admission then: {out['admission']}")
    assert status == 200, text
    status, text = out["late_body"]  # its body not in at the first read, every reading slot taken: still served
    assert status == 200, text
    assert out["admission"]["reading"] == READING and out["admission"]["inflight"] == 0, out
    status, text, seconds = out["one_more"]
    assert status == 503 and "BYOL_MAX_READING" in text and f"limit {READING}" in text, out["one_more"]
    for status, text, seconds in out["tricklers"]:
        assert status == 408 and "BYOL_BODY_TIMEOUT_S" in text and f"{DEADLINE_S} s" in text, (status, text)
        assert seconds > DEADLINE_S - 0.5, seconds  # cut at the deadline, not before
    after = admission(live)
    assert after["reading"] == 0 and after["inflight"] == 0 and after["body_timeouts_408"] >= READING, after
    embeds(live)


def raw(port: int, data: bytes, wait: float = 10.0) -> tuple[int, dict, str, float]:
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        got = b""
        while chunk := s.recv(65536):  # the edge closes the connection after a refusal
            got += chunk
    return (*parse(got), time.monotonic() - t0)


@pytest.mark.parametrize("declared", [10**9, 500_000])  # over and under the JSON body limit
def test_a_post_to_an_unknown_path_is_404_before_its_body(live, declared):
    status, headers, body, seconds = raw(live["port"], head("/wp-admin/upload.php", declared))
    assert status == 404 and seconds < 5, (status, body)
    problem = json.loads(body)[0]["error"]
    assert "unknown path" in problem and "/wp-admin/upload.php" in problem and headers["connection"] == "close"
    embeds(live)


def test_a_post_to_a_get_route_is_405_and_get_to_an_unknown_path_is_the_apps_404(live):
    status, headers, body, _ = raw(live["port"], head("/info", 500_000))
    assert status == 405 and "GET" in headers["allow"].upper() and "not allowed" in body, body
    assert live["http"].get("/no/such/page").status_code == 404
    assert live["http"].head("/no/such/page").status_code == 404


def test_every_post_route_the_server_publishes_is_an_edge_route(live):
    """The edge refuses POSTs outside ROUTES: every POST the OpenAPI document lists must be there."""
    spec = live["http"].get("/docs.json").json()
    posts = {path for path, ops in spec["paths"].items() if "post" in ops}
    assert posts and posts <= set(ROUTES), posts - set(ROUTES)
