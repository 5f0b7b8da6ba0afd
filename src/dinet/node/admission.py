"""Bounded concurrency and a bounded queue: beyond both, a request is refused at once."""

from __future__ import annotations

from collections.abc import AsyncIterator
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
    async def slot(self) -> AsyncIterator[None]:
        """Hold one generation slot; raises Busy if the queue is full."""
        if self._slots.value == 0 and self.queued >= self._max_waiting:
            raise Busy(f"{self.active} generating and {self.queued} queued")
        self.queued += 1
        try:
            await self._slots.acquire()
        finally:
            self.queued -= 1
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            self._slots.release()
