"""A node's chores wait while it computes for someone.

Re-hashing the model's chunks, probing peers and pulling their directories are
small, but frequent: an idle node of a two-node mesh woke about 76 times a second
and used 3.5% of a core for them (left alone for 20 s), and none of it at all with
the chores stopped. On a machine with as many cores as compute threads, each of
those wake-ups takes a core from a compute thread, and the whole decode step waits
for it at the threads' next barrier.

So a chore asks `Chores.lull()` first. While the node is serving, that waits, for
at most `MAX_DEFER_S`: a node that never stops serving still scrubs and probes,
only less often.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

MAX_DEFER_S = 10.0
POLL_S = 0.25


class Chores:
    def __init__(self, busy: Callable[[], bool]) -> None:
        self._busy = busy

    async def lull(self) -> None:
        """Return once the node is not serving, or after `MAX_DEFER_S` anyway."""
        deadline = trio.current_time() + MAX_DEFER_S
        # One flag read per poll costs less than an event per request.
        while self._busy() and trio.current_time() < deadline:  # noqa: ASYNC110
            await trio.sleep(POLL_S)
