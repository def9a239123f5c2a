"""One worker's decode memory, shared by all its requests: a byte semaphore sized by ``BYOL_DECODE_MEMORY_BYTES``.

Pixel limits bound what one image may be, not what decoding it allocates (a 250 KB deflated TIFF of mode F,
6,300 x 6,300, decodes to 160 MB of float32 before any conversion) nor what concurrent requests allocate together.
So every request reserves the bytes its decode will hold at its peak (:func:`serving.contract.image.decode_cost`,
read from the headers) before a pixel is decoded, and gives them back when its pixels are done:

* a request whose own cost is over the whole budget is refused at once: 413 (:class:`~serving.errors.TooLarge`);
* a request that does not fit beside the others waits, first come first served, at most ``BYOL_DECODE_WAIT_MS``,
  then gets 503 (:class:`~serving.errors.Unavailable`; the edge adds ``Retry-After``).

One lock guards the count, so the same budget serves the event loop (:meth:`DecodeMemory.reserve`: waits without
blocking the loop, and a cancelled request leaves no reservation behind), the decode threads
(:meth:`DecodeMemory.try_take`: never waits) and synchronous callers outside a server (:meth:`DecodeMemory.hold`:
waits in the calling thread). Waiters are served in arrival order, so a large request is not starved by a stream
of small ones.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

from serving.errors import TooLarge, Unavailable
from serving.limits import Limits

MEMORY_ENV, WAIT_ENV = "BYOL_DECODE_MEMORY_BYTES", "BYOL_DECODE_WAIT_MS"
_SHARED: dict[tuple[int, int], DecodeMemory] = {}
_SHARED_LOCK = threading.Lock()


@dataclass(eq=False)
class _Waiter:
    nbytes: int
    wake: Callable[[], None]
    granted: bool = False


@dataclass
class Stats:
    """What the budget saw (for tests and benchmarks): bytes in use now, the most ever in use, and how many
    reservations were granted, waited, refused as too large (413) or timed out (503)."""

    in_use: int = 0
    peak: int = 0
    granted: int = 0
    waited: int = 0
    too_large: int = 0
    timed_out: int = 0


class DecodeMemory:
    """A byte semaphore: ``capacity`` bytes, taken and given back by decodes; waits bounded by ``wait_ms``."""

    def __init__(self, capacity: int, wait_ms: int) -> None:
        if capacity < 1 or wait_ms < 0:
            raise ValueError(f"decode memory needs a positive capacity and a wait >= 0, got {capacity}, {wait_ms}")
        self.capacity, self.wait_ms = capacity, wait_ms
        self._free = capacity
        self._lock = threading.Lock()
        self._waiters: deque[_Waiter] = deque()
        self.stats = Stats()

    # -- the count (under the lock) ------------------------------------------------------------------------------
    def _check(self, nbytes: int) -> None:
        if nbytes > self.capacity:
            with self._lock:
                self.stats.too_large += 1
            raise TooLarge(f"decode memory bound exceeded: decoding this request's images needs {nbytes} bytes "
                           f"({nbytes / 2**20:.0f} MiB), more than the worker's whole decode memory of "
                           f"{self.capacity} bytes ({MEMORY_ENV}); send smaller images (fewer pixels, 8-bit "
                           "modes)")

    def _grant_locked(self, nbytes: int) -> None:
        self._free -= nbytes
        used = self.capacity - self._free
        self.stats.in_use, self.stats.peak = used, max(self.stats.peak, used)
        self.stats.granted += 1

    def _wake_locked(self) -> None:
        """Grant waiters in arrival order while the first one fits (it may not be passed by a smaller one)."""
        while self._waiters and self._waiters[0].nbytes <= self._free:
            waiter = self._waiters.popleft()
            self._grant_locked(waiter.nbytes)
            waiter.granted = True
            waiter.wake()

    def _try_locked(self, nbytes: int) -> bool:
        if not self._waiters and nbytes <= self._free:
            self._grant_locked(nbytes)
            return True
        return False

    def _busy(self, nbytes: int) -> Unavailable:
        return Unavailable(f"decode memory busy: this request needs {nbytes} bytes of the worker's decode memory "
                           f"({self.capacity} bytes, {MEMORY_ENV}), which other requests held for longer than "
                           f"{self.wait_ms} ms ({WAIT_ENV}); retry")

    def _give_up(self, waiter: _Waiter) -> bool:
        """A waiter leaves (timeout, cancellation): → whether it had been granted meanwhile (then it holds the
        bytes and must give them back)."""
        with self._lock:
            if waiter.granted:
                return True
            self._waiters.remove(waiter)
            self.stats.timed_out += 1
            self._wake_locked()  # it may have been the first in line, blocking smaller ones that fit
            return False

    # -- the API -------------------------------------------------------------------------------------------------
    def try_take(self, nbytes: int) -> bool:
        """Take ``nbytes`` now if they are free and nobody waits (any thread; never waits) → whether taken;
        :class:`TooLarge` when they are more than the whole capacity."""
        self._check(nbytes)
        with self._lock:
            return self._try_locked(nbytes)

    def give(self, nbytes: int) -> None:
        with self._lock:
            self._free += nbytes
            self.stats.in_use = self.capacity - self._free
            self._wake_locked()

    def take(self, nbytes: int) -> None:
        """Take ``nbytes``, waiting in this thread at most ``wait_ms`` (then :class:`Unavailable`)."""
        self._check(nbytes)
        event = threading.Event()
        with self._lock:
            if self._try_locked(nbytes):
                return
            waiter = _Waiter(nbytes, event.set)
            self._waiters.append(waiter)
            self.stats.waited += 1
        if not event.wait(self.wait_ms / 1000) and not self._give_up(waiter):
            raise self._busy(nbytes)

    async def take_async(self, nbytes: int) -> None:
        """Take ``nbytes``, waiting on the event loop (not blocking it) at most ``wait_ms`` (then
        :class:`Unavailable`); a cancelled wait leaves nothing taken."""
        self._check(nbytes)
        loop = asyncio.get_running_loop()
        woken = loop.create_future()

        def wake() -> None:  # called under the lock, maybe from a decode thread
            loop.call_soon_threadsafe(lambda: woken.done() or woken.set_result(None))

        with self._lock:
            if self._try_locked(nbytes):
                return
            waiter = _Waiter(nbytes, wake)
            self._waiters.append(waiter)
            self.stats.waited += 1
        deadline = time.monotonic() + self.wait_ms / 1000
        try:
            await asyncio.wait_for(asyncio.shield(woken), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            if not self._give_up(waiter):
                raise self._busy(nbytes) from None
        except BaseException:  # cancelled: give back what a grant in the meantime took
            if self._give_up(waiter):
                self.give(nbytes)
            raise

    @contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        """``with`` block holding ``nbytes`` (:meth:`take`: a blocking wait in this thread)."""
        self.take(nbytes)
        try:
            yield
        finally:
            self.give(nbytes)

    @asynccontextmanager
    async def reserve(self, nbytes: int) -> AsyncIterator[None]:
        """``async with`` block holding ``nbytes`` (:meth:`take_async`)."""
        await self.take_async(nbytes)
        try:
            yield
        finally:
            self.give(nbytes)

    @property
    def free(self) -> int:
        return self._free


def shared(limits: Limits) -> DecodeMemory:
    """The process's budget for ``limits`` (one per worker process: every request of it shares this one)."""
    key = (limits.decode_memory, limits.decode_wait_ms)
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = DecodeMemory(*key)
        return _SHARED[key]
