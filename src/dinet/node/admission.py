"""Bounded concurrency and a bounded queue: beyond both, a request is refused at once.

Waiting requests are served highest priority first, first come first served among
equals; the node ranks them by the client's standing (see node/receipts.py).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio


class Busy(Exception):
    """No slot and no room in the queue: the client should try another peer."""


@dataclass(order=True)
class _Waiter:
    rank: tuple[float, int]
    granted: bool = field(default=False, compare=False)
    gone: bool = field(default=False, compare=False)
    event: trio.Event = field(default_factory=trio.Event, compare=False)


class Admission:
    def __init__(self, max_concurrent: int, max_queue: int) -> None:
        self._free = max_concurrent
        self._max_waiting = max_queue
        self._waiters: list[_Waiter] = []
        self._arrivals = itertools.count()
        self.active = 0
        self.queued = 0

    @asynccontextmanager
    async def slot(
        self, while_waiting: Callable[[], Awaitable[None]] | None = None, priority: float = 0.0
    ) -> AsyncIterator[None]:
        """Hold one generation slot; raises Busy if the queue is full.

        `while_waiting` runs for as long as the request waits in the queue; a higher
        `priority` is served before lower ones that are waiting.
        """
        if self._free > 0 and self.queued == 0:
            self._free -= 1
        else:
            if self.queued >= self._max_waiting:
                raise Busy(f"{self.active} generating and {self.queued} queued")
            await self._wait(while_waiting, priority)
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            self._release()

    async def _wait(self, while_waiting: Callable[[], Awaitable[None]] | None, priority: float) -> None:
        waiter = _Waiter((-priority, next(self._arrivals)))
        heapq.heappush(self._waiters, waiter)
        self.queued += 1
        try:
            async with trio.open_nursery() as nursery:
                if while_waiting is not None:
                    nursery.start_soon(while_waiting)
                await waiter.event.wait()
                nursery.cancel_scope.cancel()
        except BaseException:
            waiter.gone = True
            if waiter.granted:
                self._release()  # handed a slot just as we left: pass it on
            raise
        finally:
            self.queued -= 1

    def _release(self) -> None:
        while self._waiters:
            waiter = heapq.heappop(self._waiters)
            if not waiter.gone:
                waiter.granted = True
                waiter.event.set()
                return
        self._free += 1
