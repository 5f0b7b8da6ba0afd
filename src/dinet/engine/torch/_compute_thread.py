"""One OS thread that makes every torch call of a pipeline stage.

OpenMP keeps one team of threads per calling thread. When steps ran in whichever
thread `trio.to_thread` picked, each new caller built its own team and the teams spun
against each other: a 2-thread decode step of the whole model took 25-30 ms there
against 11-13 ms when one thread did everything (measured on this 2-core machine).
So a stage loads, opens sessions and steps on this one thread, in order.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import outcome
import trio

T = TypeVar("T")

_Job = tuple[Callable[[], Any], Callable[[outcome.Outcome[Any]], None]]


class ComputeThread:
    def __init__(self, name: str = "dinet-compute") -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            call, deliver = job
            deliver(outcome.capture(call))

    async def run(self, call: Callable[[], T]) -> T:
        """`call()` on the compute thread, after the jobs queued before it.

        Not cancellable once queued: a step is milliseconds, and abandoning it halfway
        would leave its session's KV cache in an unknown state.
        """
        token = trio.lowlevel.current_trio_token()
        task = trio.lowlevel.current_task()

        def deliver(result: outcome.Outcome[Any]) -> None:
            try:
                token.run_sync_soon(trio.lowlevel.reschedule, task, result)
            except trio.RunFinishedError:
                pass  # the event loop ended while this job ran: nobody waits for it

        self._jobs.put((call, deliver))
        result: T = await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)
        return result

    def close(self) -> None:
        """Let the thread end after the jobs already queued."""
        self._jobs.put(None)
