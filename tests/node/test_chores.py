"""A node's chores wait while it serves, and never longer than their cap."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio
import trio.testing

from dinet.node.chores import MAX_DEFER_S, POLL_S, Chores


def run_with_mock_clock(main: Callable[[], Awaitable[None]]) -> None:
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_an_idle_node_does_its_chores_at_once() -> None:
    async def main() -> None:
        chores = Chores(lambda: False)
        await chores.lull()
        assert trio.current_time() == 0.0

    run_with_mock_clock(main)


def test_a_chore_waits_until_the_node_stops_serving() -> None:
    serving = True

    async def stop_serving_after(seconds: float) -> None:
        nonlocal serving
        await trio.sleep(seconds)
        serving = False

    async def main() -> None:
        chores = Chores(lambda: serving)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_serving_after, 3.0)
            await chores.lull()
            assert 3.0 <= trio.current_time() <= 3.0 + POLL_S
            assert not serving

    run_with_mock_clock(main)


def test_a_node_that_never_stops_serving_still_does_its_chores() -> None:
    async def main() -> None:
        chores = Chores(lambda: True)
        await chores.lull()
        assert MAX_DEFER_S <= trio.current_time() <= MAX_DEFER_S + POLL_S
        await chores.lull()  # each chore waits at most the cap, not the sum
        assert trio.current_time() <= 2 * (MAX_DEFER_S + POLL_S)

    run_with_mock_clock(main)
