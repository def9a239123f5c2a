"""serving.batching.MicroBatcher: concurrent calls share model calls, and each caller gets its own rows back."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from serving.batching import MicroBatcher


def slow_identity(calls: list[int]):
    """A model stand-in: row i of the output is row i of the input (so a mix-up shows), ~5 ms a call."""
    lock = threading.Lock()

    def fn(x: np.ndarray) -> np.ndarray:
        with lock:
            calls.append(len(x))
        threading.Event().wait(0.005)
        return x.reshape(len(x), -1).astype(np.float32)

    return fn


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_are_merged_and_get_their_own_rows():
    calls: list[int] = []
    b = MicroBatcher(slow_identity(calls), max_batch_size=16, max_wait_ms=5)
    inputs = [np.full((1, 2, 2, 3), i, dtype=np.uint8) for i in range(40)]

    async def go():
        return await asyncio.gather(*(b.submit(x) for x in inputs))

    outs = run(go())
    for i, out in enumerate(outs):
        assert out.shape == (1, 12) and np.all(out == i)
    assert max(calls) > 1 and max(calls) <= 16 and sum(calls) == 40


def test_multi_image_requests_keep_their_order():
    b = MicroBatcher(slow_identity([]), max_batch_size=8)
    x = np.arange(5 * 12, dtype=np.uint8).reshape(5, 2, 2, 3)
    y = np.arange(3 * 12, dtype=np.uint8).reshape(3, 2, 2, 3) + 100

    async def go():
        return await asyncio.gather(b.submit(x), b.submit(y))

    ox, oy = run(go())
    np.testing.assert_array_equal(ox, x.reshape(5, -1))
    np.testing.assert_array_equal(oy, y.reshape(3, -1))


def test_model_error_reaches_every_waiter_and_worker_survives():
    state = {"fail": True}

    def fn(x):
        if state["fail"]:
            raise ValueError("model exploded")
        return x.reshape(len(x), -1).astype(np.float32)

    b = MicroBatcher(fn, max_batch_size=4)

    async def go():
        res = await asyncio.gather(*(b.submit(np.zeros((1, 1, 1, 3), np.uint8)) for _ in range(3)),
                                   return_exceptions=True)
        state["fail"] = False
        return res, await b.submit(np.ones((1, 1, 1, 3), np.uint8))

    res, after = run(go())
    assert all(isinstance(r, ValueError) for r in res) and np.all(after == 1)


def test_closed_batcher_still_answers():
    b = MicroBatcher(slow_identity([]), max_batch_size=4)

    async def go():
        first = await b.submit(np.ones((1, 1, 1, 3), np.uint8))
        b.close()
        return first, await b.submit(np.full((2, 1, 1, 3), 7, np.uint8))

    first, late = run(go())
    assert np.all(first == 1) and late.shape == (2, 3) and np.all(late == 7)


def test_bad_max_batch_size_is_refused():
    with pytest.raises(ValueError, match="max_batch_size"):
        MicroBatcher(lambda x: x, max_batch_size=0)


def test_a_request_larger_than_a_batch_is_cut_into_model_batches_in_order():
    calls: list[int] = []
    b = MicroBatcher(slow_identity(calls), max_batch_size=8, max_wait_ms=1)
    x = np.arange(21 * 3, dtype=np.uint8).reshape(21, 1, 1, 3)

    out = run(b.submit(x))
    np.testing.assert_array_equal(out, x.reshape(21, -1))
    assert max(calls) <= 8 and sum(calls) == 21


def test_a_closed_batcher_cuts_a_large_request_too():
    calls: list[int] = []
    b = MicroBatcher(slow_identity(calls), max_batch_size=4)
    b.close()
    x = np.arange(10 * 3, dtype=np.uint8).reshape(10, 1, 1, 3)

    out = run(b.submit(x))
    np.testing.assert_array_equal(out, x.reshape(10, -1))
    assert calls == [4, 4, 2]
