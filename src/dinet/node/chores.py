"""A node's chores wait while it computes for someone.

Re-hashing the model's chunks, probing peers and pulling their directories are
small, but frequent: an idle node of a two-node mesh woke about 76 times a second
and used 3.5% of a core for them (left alone for 20 s), and none of it at all with
the chores stopped. On a machine with as many cores as compute threads, each of
those wake-ups takes a core from a compute thread, and the whole decode step waits
for it at the threads' next barrier.

So a chore asks `Chores.lull()` first. While the node is serving, that waits, for
at most `max_defer_s`: a node that never stops serving still scrubs and probes,
only less often.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

MAX_DEFER_S = 10.0
POLL_S = 0.25


class Chores:
    def __init__(self, busy: Callable[[], bool], max_defer_s: float = MAX_DEFER_S) -> None:
        self._busy = busy
        self._max_defer_s = max_defer_s
        self.deferred_s = 0.0  # total time chores waited: for tests and logs

    async def lull(self) -> None:
        """Return once the node is not serving, or after `max_defer_s` anyway."""
        started = trio.current_time()
        deadline = started + self._max_defer_s
        while self._busy() and trio.current_time() < deadline:
            await trio.sleep(POLL_S)
        self.deferred_s += trio.current_time() - started
