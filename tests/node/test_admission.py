"""The generation slots alone: bounded queue, priority, and turns among peers."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from dinet.node.admission import Admission, Busy


async def _served_in_order(admission: Admission, arrivals: list[tuple[str, float]]) -> list[str]:
    """Hold the one slot, let requests (peer, priority) arrive in this order, then free it:
    the order in which they are served."""
    served: list[str] = []
    release = trio.Event()

    async def request(name: str, peer: str, priority: float) -> None:
        async with admission.slot(priority=priority, peer=peer):
            served.append(name)

    async def blocker() -> None:
        async with admission.slot(peer="blocker"):
            await release.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(blocker)
        await trio.testing.wait_all_tasks_blocked()
        for i, (peer, priority) in enumerate(arrivals):
            nursery.start_soon(request, f"{peer}{i}", peer, priority)
            await trio.testing.wait_all_tasks_blocked()
        assert admission.queued == len(arrivals)
        release.set()
    return served


async def test_first_come_first_served_among_equals() -> None:
    order = await _served_in_order(Admission(1, 8), [("a", 0.0), ("b", 0.0), ("c", 0.0)])
    assert order == ["a0", "b1", "c2"]


async def test_a_peer_with_many_waiting_takes_turns_with_the_others() -> None:
    arrivals = [("flood", 0.0)] * 4 + [("calm", 0.0), ("other", 0.0)]
    order = await _served_in_order(Admission(1, 8), arrivals)
    assert order[:3] == ["flood0", "calm4", "other5"]  # not behind the flood's three others
    assert order[3:] == ["flood1", "flood2", "flood3"]


async def test_the_blocking_peer_goes_after_a_newcomer() -> None:
    order = await _served_in_order(Admission(1, 8), [("blocker", 0.0), ("new", 0.0)])
    assert order == ["new1", "blocker0"]  # the blocker already has a request in progress


async def test_priority_comes_before_turns() -> None:
    arrivals = [("poor", 0.0), ("rich", 1.0), ("rich", 1.0)]
    order = await _served_in_order(Admission(1, 8), arrivals)
    assert order == ["rich1", "rich2", "poor0"]


async def test_a_full_queue_is_busy_and_nothing_leaks() -> None:
    admission = Admission(1, 2)
    release = trio.Event()

    async def hold(peer: str) -> None:
        async with admission.slot(peer=peer):
            await release.wait()

    async with trio.open_nursery() as nursery:
        for peer in "aab":
            nursery.start_soon(hold, peer)
            await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(Busy):
            async with admission.slot(peer="c"):
                pass
        release.set()
    assert (admission.active, admission.queued) == (0, 0)
    # Nobody is left counted as in progress: "a" and "b" now wait their turn as newcomers.
    assert await _served_in_order(admission, [("a", 0.0), ("b", 0.0)]) == ["a0", "b1"]
    assert await _served_in_order(admission, [("b", 0.0), ("a", 0.0)]) == ["b0", "a1"]


async def test_the_expected_wait_follows_the_requests_ahead() -> None:
    admission = Admission(1, 8)
    assert admission.expected_wait_s() == 0.0  # a free slot
    release = trio.Event()

    async def hold(peer: str, expected_s: float) -> None:
        async with admission.slot(peer=peer, expected_s=expected_s):
            await release.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold, "long", 10.0)
        await trio.testing.wait_all_tasks_blocked()
        assert 9.0 < admission.expected_wait_s() <= 10.0  # the one generating
        nursery.start_soon(hold, "next", 4.0)
        await trio.testing.wait_all_tasks_blocked()
        assert 13.0 < admission.expected_wait_s() <= 14.0  # and then the one waiting
        release.set()
    assert admission.expected_wait_s() == 0.0
