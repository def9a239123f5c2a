"""The decode-memory budget (``serving.decode_memory``): a byte semaphore shared by a worker's requests, wired into
the upload decode path (``serving.http_helpers``) — and a real server attacked with small files that decode large,
whose worker's peak RSS must stay within the budget."""

from __future__ import annotations

import asyncio
import io
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from bench.decode_cost import attack, embed_workers, hostile, peak_over_mb, reset_peaks
from serving import decode_memory
from serving import http_helpers as h
from serving.contract import image
from serving.decode_memory import DecodeMemory
from serving.errors import BadRequest, TooLarge, Unavailable
from serving.limits import Limits
from tests.serving import server as srv

MiB = 2**20


def run(coro):
    return asyncio.run(coro)


# -- the semaphore ------------------------------------------------------------------------------------------------
def test_over_the_whole_budget_is_413_at_once_naming_the_bound():
    budget = DecodeMemory(100, 10_000)
    t0 = time.monotonic()
    with pytest.raises(TooLarge, match=r"101 bytes.*decode memory of 100 bytes \(BYOL_DECODE_MEMORY_BYTES\)"):
        run(budget.take_async(101))
    assert time.monotonic() - t0 < 1 and budget.free == 100 and budget.stats.too_large == 1


def test_a_request_that_does_not_fit_waits_then_gets_503_naming_the_bound():
    budget = DecodeMemory(100, 200)
    budget.take(60)

    async def second():
        t0 = time.monotonic()
        with pytest.raises(Unavailable, match=r"100 bytes, BYOL_DECODE_MEMORY_BYTES.*200 ms \(BYOL_DECODE_WAIT_MS\)"):
            await budget.take_async(50)
        return time.monotonic() - t0

    assert 0.18 <= run(second()) < 2
    assert budget.free == 40 and budget.stats.timed_out == 1 and not budget._waiters


def test_a_waiter_is_served_when_memory_comes_back_from_another_thread():
    budget = DecodeMemory(100, 5_000)
    budget.take(80)
    threading.Timer(0.1, budget.give, (80,)).start()

    async def waiting():
        async with budget.reserve(70):
            assert budget.free == 30
        return budget.free

    assert run(waiting()) == 100 and budget.stats.waited == 1 and budget.stats.peak == 80


def test_waiters_are_served_first_come_first_served():
    """A large request in line is not passed by a small one that would fit: no starvation."""
    budget = DecodeMemory(100, 5_000)
    order = []

    async def main():
        budget.take(90)

        async def one(name, n):
            async with budget.reserve(n):
                order.append(name)
                await asyncio.sleep(0.01)

        big = asyncio.create_task(one("big", 100))
        await asyncio.sleep(0.02)
        small = asyncio.create_task(one("small", 5))  # would fit now (10 free), but big came first
        await asyncio.sleep(0.05)
        assert order == []
        budget.give(90)
        await asyncio.gather(big, small)

    run(main())
    assert order == ["big", "small"] and budget.free == 100


def test_a_cancelled_waiter_leaves_nothing_behind():
    budget = DecodeMemory(100, 5_000)

    async def main():
        budget.take(100)
        task = asyncio.create_task(budget.take_async(50))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        budget.give(100)

    run(main())
    assert budget.free == 100 and not budget._waiters


def test_the_blocking_take_waits_in_its_thread_and_times_out():
    budget = DecodeMemory(10, 100)
    with budget.hold(10):
        t0 = time.monotonic()
        with pytest.raises(Unavailable):
            budget.take(1)
        assert time.monotonic() - t0 >= 0.09
    assert budget.try_take(10) and not budget.try_take(1)


def test_one_budget_per_process_for_the_same_limits():
    limits = Limits(decode_memory=12345, decode_wait_ms=7)
    assert decode_memory.shared(limits) is decode_memory.shared(Limits(decode_memory=12345, decode_wait_ms=7))


# -- the decode path ----------------------------------------------------------------------------------------------
def _tiff(mode: str, side: int) -> bytes:
    return hostile({"F": "tiff_F", "I;16": "tiff_I16"}[mode], side)


@pytest.fixture
def small_budget(monkeypatch):
    """http_helpers with a 64 MiB decode memory and a 300 ms wait (a fresh budget for the test)."""
    monkeypatch.setattr(decode_memory, "_SHARED", {})
    monkeypatch.setattr(h, "LIMITS", Limits(decode_memory=64 * MiB, decode_wait_ms=300))
    return decode_memory.shared(h.LIMITS)


def test_request_cost_counts_the_largest_image_and_the_output():
    big, small = _tiff("F", 1500), _tiff("I;16", 300)
    images, _ = h.opened([big, small, small])
    try:
        cost = h.decode_bytes(images, 28)
        assert cost == image.decode_cost(images[0], 28) + 3 * 28 * 28 * 3
    finally:
        h._close(images)


def test_every_image_is_freed_as_soon_as_it_is_decoded():
    images, _ = h.opened([_tiff("F", 300), _tiff("I;16", 300)])
    h.decode_opened(images, 28)
    for img in images:
        with pytest.raises(ValueError, match="closed image"):
            img.load()


def test_async_decode_over_the_budget_is_413(small_budget):
    with pytest.raises(TooLarge, match="BYOL_DECODE_MEMORY_BYTES"):
        run(h.pixels_async([_tiff("F", 3000)], 28))  # ~3000^2 x 8 bytes > 64 MiB
    assert small_budget.free == small_budget.capacity and small_budget.stats.too_large == 1


def test_async_decode_waits_for_memory_then_503(small_budget):
    data = _tiff("F", 1200)  # ~12 MiB to decode
    small_budget.take(60 * MiB)  # another request holds nearly all of it
    with pytest.raises(Unavailable, match="BYOL_DECODE_WAIT_MS"):
        run(h.pixels_async([data], 28))
    small_budget.give(60 * MiB)
    out = run(h.pixels_async([data], 28))
    assert out.shape == (1, 28, 28, 3) and small_budget.free == small_budget.capacity


def test_concurrent_async_decodes_never_hold_more_than_the_budget(small_budget):
    datas = [_tiff("F", 1500), _tiff("I;16", 2000), _tiff("F", 1800)]

    async def main():
        return await asyncio.gather(*(h.pixels_async([d], 28) for d in datas * 2), return_exceptions=True)

    results = run(main())
    assert all(isinstance(r, np.ndarray | Unavailable) for r in results), results
    assert sum(isinstance(r, np.ndarray) for r in results) >= 3
    assert 0 < small_budget.stats.peak <= small_budget.capacity and small_budget.free == small_budget.capacity


def test_sync_pixels_work_outside_a_server_and_use_the_same_budget(small_budget):
    assert h.pixels([_tiff("I;16", 500)], 16).shape == (1, 16, 16, 3)
    assert small_budget.stats.granted == 1 and small_budget.free == small_budget.capacity
    with pytest.raises(TooLarge):
        h.pixels([_tiff("F", 3000)], 16)


def test_a_bad_image_is_still_400_and_releases_everything(small_budget):
    with pytest.raises(BadRequest, match="image #1: not an image"):
        run(h.pixels_async([_tiff("I;16", 200), b"hello, not an image"], 28))
    assert small_budget.free == small_budget.capacity


def test_tiny_images_still_decode_on_the_loop(small_budget, monkeypatch):
    calls = []
    real = h.to_thread.run_sync
    monkeypatch.setattr(h.to_thread, "run_sync", lambda *a, **k: calls.append(a) or real(*a, **k))
    out = run(h.pixels_async([srv.png(np.full((28, 28, 3), 7, np.uint8))], 28))
    # on the loop, one at a time, at most INLINE_PIXELS x 16 bytes: no thread hop and no budget bookkeeping (its
    # ~10 us were 3 % of a 28-px /embed); anything larger reserves (test_async_decode_waits_for_memory_then_503)
    assert out.shape == (1, 28, 28, 3) and calls == [] and small_budget.stats.granted == 0
    out = run(h.pixels_async([srv.png(np.full((128, 128, 3), 7, np.uint8))], 28))
    assert out.shape == (1, 28, 28, 3) and small_budget.stats.granted == 1


# -- a real server under attack -----------------------------------------------------------------------------------
BUDGET = 256 * MiB
SLACK = 64 * MiB  # what is not decode memory: request bodies, answers, thread stacks, allocator rounding
ATTACK = {"tiff_F": 3800, "tiff_I": 3800, "tiff_I16": 5000, "tiff_LAB": 4200, "jpeg_cmyk": 3200, "png_I16": 5000}


@pytest.fixture(scope="module")
def budgeted(registered_bundle):
    srv.prepare_version(registered_bundle, n_fit=30)
    server = srv.start({"BYOL_MODEL_TAG": registered_bundle, "BYOL_DECODE_MEMORY_BYTES": str(BUDGET),
                        "BYOL_DECODE_WAIT_MS": "5000", "BYOL_EMBED_WORKERS": "1"})
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.slow
def test_concurrent_hostile_images_stay_within_the_decode_budget(budgeted):
    """12 small files (each decoding to 100-200 MiB, all within the pixel limits) sent at once, plus one whose decode
    is over the whole budget: the worker's peak RSS rises by at most the budget (+ slack), every answer is 200, 413
    or 503, and the same worker embeds a normal image right after. (Before the budget: ~1.4 GiB for this attack.)"""
    datas = {kind: hostile(kind, side) for kind, side in ATTACK.items()}
    assert max(map(len, datas.values())) < 3 * MiB  # small on the wire
    good = srv.png(np.full((28, 28, 3), 90, np.uint8))
    assert attack(budgeted, good, 1)["statuses"] == [200]  # warm
    pids = embed_workers(budgeted)
    assert len(pids) == 1
    before = reset_peaks(pids)

    async def fire():
        async with httpx.AsyncClient(base_url=budgeted.url, timeout=120) as http:
            posts = [http.post("/embed", files={"image": ("x", d)}) for d in list(datas.values()) * 2]
            posts.append(http.post("/embed", files={"image": ("x", hostile("tiff_F", 6300))}))
            return [(r.status_code, r.text) for r in await asyncio.gather(*posts)]

    answers = run(fire())
    statuses = [code for code, _ in answers]
    assert all("BYOL_DECODE_MEMORY_BYTES" in text for code, text in answers if code in (413, 503)), answers
    rise = peak_over_mb(before) * MiB
    print(f"decode attack: peak RSS rise {rise / MiB:.0f} MiB (budget {BUDGET / MiB:.0f} MiB), statuses {statuses}")
    assert rise <= BUDGET + SLACK, f"peak RSS rose {rise / MiB:.0f} MiB (budget {BUDGET / MiB:.0f} MiB): {statuses}"
    assert set(statuses) <= {200, 413, 503}, statuses
    assert statuses[-1] == 413 and statuses.count(200) >= 4, statuses
    assert embed_workers(budgeted) == pids and attack(budgeted, good, 1)["statuses"] == [200]


@pytest.mark.parametrize("kind, mode", [("tiff_F", "F"), ("tiff_I", "I"), ("tiff_I16", "I;16"), ("tiff_LAB", "LAB"),
                                        ("jpeg_cmyk", "CMYK"), ("png_I16", "I;16")])
def test_hostile_images_are_small_files_of_large_decodes(kind, mode):
    data = hostile(kind, 2000)
    img = Image.open(io.BytesIO(data))
    assert (img.mode, img.size) == (mode, (2000, 2000)) and len(data) < 2000 * 2000 // 4
