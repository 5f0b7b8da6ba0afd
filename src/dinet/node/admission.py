"""Bounded concurrency and a bounded queue: beyond both, a request is refused at once."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio


class Busy(Exception):
    """No slot and no room in the queue: the client should try another peer."""


class Admission:
    def __init__(self, max_concurrent: int, max_queue: int) -> None:
        self._slots = trio.Semaphore(max_concurrent)
        self._max_waiting = max_queue
        self.active = 0
        self.queued = 0

    @asynccontextmanager
    async def slot(self, while_waiting: Callable[[], Awaitable[None]] | None = None) -> AsyncIterator[None]:
        """Hold one generation slot; raises Busy if the queue is full.

        `while_waiting` runs for as long as the request waits in the queue.
        """
        if self._slots.value == 0 and self.queued >= self._max_waiting:
            raise Busy(f"{self.active} generating and {self.queued} queued")
        self.queued += 1
        try:
            if self._slots.value == 0 and while_waiting is not None:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(while_waiting)
                    await self._slots.acquire()
                    nursery.cancel_scope.cancel()
            else:
                await self._slots.acquire()
        finally:
            self.queued -= 1
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            self._slots.release()
