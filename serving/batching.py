"""Adaptive micro-batching: concurrent single-image requests are merged into one ONNX Runtime call.

Why our own and not ``@bentoml.api(batchable=True)``: BentoML batches only requests that arrive over HTTP at the
batchable endpoint, so an ``/embed`` handler would have to call it through BentoML's in-process HTTP proxy (a JSON
round trip of the pixel array per request, about the framework's whole per-request cost again), and the batch would
run on whatever model is current when it leaves, not on the version the request started with. Here each loaded
model version owns its batcher, so a request is answered entirely by the version it took at its start.

Policy ("adaptive" the simple way): one batch runs at a time; while it runs, new requests queue; the next batch
takes everything queued, up to ``max_batch_size`` images. A lone request waits at most ``max_wait_ms`` for company,
so under light load latency stays one model call, and under heavy load batches grow by themselves. A request of
more than ``max_batch_size`` images is cut into model batches of at most that many (never one giant ONNX Runtime
call: its memory and latency would grow with the request, and it would hold up every other request meanwhile).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class _Item:
    images: np.ndarray
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    """Batches calls to ``fn(uint8 [N,S,S,3]) -> float32 [N,D]`` made from coroutines of one event loop.

    Args:
        fn: the blocking model call; it runs in a worker thread, one batch at a time.
        max_batch_size: most images in one model call (a larger request is cut into calls of this many).
        max_wait_ms: longest a request waits for others to join its batch when the model is idle.
        on_batch: called with each batch's image count before its model call (``serving.metrics``).
    """

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], max_batch_size: int = 64,
                 max_wait_ms: float = 2.0, on_batch: Callable[[int], None] | None = None) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Item | None] | None = None
        self._worker: asyncio.Task | None = None
        self._closed = False
        self.batch_sizes: list[int] = []  # recent batch sizes, for /info and tests (last 1,000)

    async def submit(self, images: np.ndarray) -> np.ndarray:
        """Embed ``images`` (one request's worth), batched with whatever else is waiting; a request larger than
        ``max_batch_size`` goes in as several batches, answered in order."""
        loop = asyncio.get_running_loop()
        if self._closed:  # a request that took this version before it was swapped out: answer it directly
            return await loop.run_in_executor(None, self._in_chunks, images)
        if len(images) <= self.max_batch_size:
            return await self._submit(images, loop)
        step = self.max_batch_size
        parts = await asyncio.gather(*(self._submit(images[i:i + step], loop) for i in range(0, len(images), step)))
        return np.concatenate(parts)

    def _in_chunks(self, images: np.ndarray) -> np.ndarray:
        step = self.max_batch_size
        if len(images) <= step:
            return self.fn(images)
        return np.concatenate([self.fn(images[i:i + step]) for i in range(0, len(images), step)])

    async def _submit(self, images: np.ndarray, loop: asyncio.AbstractEventLoop) -> np.ndarray:
        if self._worker is None or self._worker.done():
            self._queue = asyncio.Queue()
            self._worker = loop.create_task(self._run())
        future = loop.create_future()
        self._queue.put_nowait(_Item(images, future))
        return await future

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop the worker once the queue is drained; later submits run unbatched."""
        self._closed = True
        if self._queue is not None:
            self._queue.put_nowait(None)

    async def _collect(self, first: _Item) -> tuple[list[_Item], bool]:
        batch, count, stop = [first], len(first.images), False
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while count < self.max_batch_size:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if item is None:
                stop = True
                break
            if item.future.done():  # its request was cancelled (client gone): skip its work
                continue
            if count + len(item.images) > self.max_batch_size:
                self._queue.put_nowait(item)  # keep it for the next batch (order is not a promise)
                break
            batch.append(item)
            count += len(item.images)
        return batch, stop

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            if first is None:
                return
            if first.future.done():  # cancelled while queued (its client disconnected): no model work for it
                continue
            batch, stop = await self._collect(first)
            images = batch[0].images if len(batch) == 1 else np.concatenate([b.images for b in batch])
            self.batch_sizes = [*self.batch_sizes[-999:], len(images)]
            if self.on_batch is not None:
                try:
                    self.on_batch(len(images))
                except Exception:  # a metric must never stop the batcher's worker
                    log.exception("on_batch callback failed")
            try:
                out = await loop.run_in_executor(None, self.fn, images)
            except Exception as exc:  # every waiter of this batch gets the error; the worker lives on
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
            else:
                start = 0
                for item in batch:
                    n = len(item.images)
                    if not item.future.done():
                        item.future.set_result(out[start:start + n])
                    start += n
            if stop:
                return
