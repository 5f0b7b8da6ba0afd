"""Bounded concurrency and a bounded queue: beyond both, a request is refused at once.

Waiting requests are served highest priority first (the node ranks them by the
client's standing, see node/receipts.py), then fairly among peers: a request goes
after those of peers with fewer requests in progress (generating or waiting) than
its own peer had when it arrived, so one peer's many requests take turns with
everybody else's rather than all going first; first come first served after that.
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
    rank: tuple[float, int, int]
    granted: bool = field(default=False, compare=False)
    gone: bool = field(default=False, compare=False)
    event: trio.Event = field(default_factory=trio.Event, compare=False)


class Admission:
    def __init__(self, max_concurrent: int, max_queue: int) -> None:
        self._free = max_concurrent
        self._max_waiting = max_queue
        self._waiters: list[_Waiter] = []
        self._arrivals = itertools.count()
        self._in_progress: dict[str, int] = {}  # per peer: its requests generating or waiting
        self.active = 0
        self.queued = 0

    @asynccontextmanager
    async def slot(
        self,
        while_waiting: Callable[[], Awaitable[None]] | None = None,
        priority: float = 0.0,
        peer: str = "",
    ) -> AsyncIterator[None]:
        """Hold one generation slot for `peer`; raises Busy if the queue is full.

        `while_waiting` runs for as long as the request waits in the queue; a higher
        `priority` is served before lower ones that are waiting.
        """
        ahead = self._in_progress.get(peer, 0)
        at_once = self._free > 0 and self.queued == 0
        if not at_once and self.queued >= self._max_waiting:
            raise Busy(f"{self.active} generating and {self.queued} queued")
        self._in_progress[peer] = ahead + 1
        try:
            if at_once:
                self._free -= 1
            else:
                await self._wait(while_waiting, (-priority, ahead, next(self._arrivals)))
            self.active += 1
            try:
                yield
            finally:
                self.active -= 1
                self._release()
        finally:
            self._in_progress[peer] -= 1
            if not self._in_progress[peer]:
                del self._in_progress[peer]

    async def _wait(
        self, while_waiting: Callable[[], Awaitable[None]] | None, rank: tuple[float, int, int]
    ) -> None:
        waiter = _Waiter(rank)
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
