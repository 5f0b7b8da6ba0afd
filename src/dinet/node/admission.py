"""Bounded concurrency and a bounded queue: beyond both, a request is refused at once.

Waiting requests are served highest priority first (the node ranks them by the
client's standing, see node/receipts.py), then fairly among peers: a request goes
after those of peers with fewer requests in progress (generating or waiting) than
its own peer had when it arrived, so one peer's many requests take turns with
everybody else's rather than all going first; first come first served after that.

Each request comes with how long it is expected to take (`expected_s`, from the node's
measured speed), so the node can tell how long a new one would wait for a slot
(`expected_wait_s`) and refuse at once one whose deadline it cannot meet.
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
        self._slots = max_concurrent
        self._free = max_concurrent
        self._max_waiting = max_queue
        self._waiters: list[_Waiter] = []
        self._arrivals = itertools.count()
        self._in_progress: dict[str, int] = {}  # per peer: its requests generating or waiting
        self.active = 0
        self.queued = 0
        self._ids = itertools.count()
        self._ends_at: dict[int, float] = {}  # per request generating: when it should end (trio clock)
        self._waiting_s: dict[int, float] = {}  # per request waiting: how long it should take

    def expected_wait_s(self) -> float:
        """How long a request arriving now would wait for a slot, by the expected times
        of the requests generating and waiting (served in turn as slots free up)."""
        if self._free > 0 and self.queued == 0:
            return 0.0
        now = trio.current_time()
        free_at = [max(0.0, end - now) for end in self._ends_at.values()]
        free_at += [0.0] * max(0, self._slots - len(free_at))
        heapq.heapify(free_at)
        for took in self._waiting_s.values():
            heapq.heappush(free_at, heapq.heappop(free_at) + took)
        return free_at[0]

    @asynccontextmanager
    async def slot(
        self,
        while_waiting: Callable[[], Awaitable[None]] | None = None,
        priority: float = 0.0,
        peer: str = "",
        expected_s: float = 0.0,
    ) -> AsyncIterator[None]:
        """Hold one generation slot for `peer`; raises Busy if the queue is full.

        `while_waiting` runs for as long as the request waits in the queue; a higher
        `priority` is served before lower ones that are waiting. `expected_s`: how long
        the request should take once it has its slot (0: unknown).
        """
        ahead = self._in_progress.get(peer, 0)
        at_once = self._free > 0 and self.queued == 0
        if not at_once and self.queued >= self._max_waiting:
            raise Busy(f"{self.active} generating and {self.queued} queued")
        self._in_progress[peer] = ahead + 1
        request = next(self._ids)
        try:
            if at_once:
                self._free -= 1
            else:
                self._waiting_s[request] = expected_s
                try:
                    await self._wait(while_waiting, (-priority, ahead, next(self._arrivals)))
                finally:
                    del self._waiting_s[request]
            self.active += 1
            self._ends_at[request] = trio.current_time() + expected_s
            try:
                yield
            finally:
                del self._ends_at[request]
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
