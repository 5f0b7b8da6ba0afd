"""The stage's compute thread: every call on one OS thread, in order, errors passed back."""

from __future__ import annotations

import threading

import pytest
import trio
import trio.lowlevel
import trio.testing

from dinet.engine.torch._compute_thread import ComputeThread


async def test_calls_run_in_order_on_one_thread_other_than_the_event_loops() -> None:
    compute = ComputeThread("test-compute")
    seen: list[tuple[int, int]] = []

    def record(i: int) -> int:
        seen.append((i, threading.get_ident()))
        return i * i

    try:
        results: list[int] = []

        async def call(i: int) -> None:
            results.append(await compute.run(lambda: record(i)))

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(call, i)
                await trio.lowlevel.checkpoint()  # queued in this order
    finally:
        compute.close()
    assert [i for i, _ in seen] == list(range(20))
    assert len({ident for _, ident in seen}) == 1
    assert seen[0][1] != threading.get_ident()
    assert sorted(results) == [i * i for i in range(20)]


async def test_an_exception_in_a_call_reaches_the_caller_and_the_thread_goes_on() -> None:
    compute = ComputeThread("test-compute")

    def fail() -> None:
        raise RuntimeError("torch said no")

    try:
        with pytest.raises(RuntimeError, match="torch said no"):
            await compute.run(fail)
        assert await compute.run(lambda: 42) == 42
    finally:
        compute.close()


async def test_a_cancelled_caller_still_waits_for_its_call_to_finish() -> None:
    compute = ComputeThread("test-compute")
    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    def slow() -> None:
        started.set()
        release.wait(30)
        finished.set()

    caller_scope = trio.CancelScope()
    finished_when_back: list[bool] = []

    async def caller() -> None:
        with caller_scope:
            await compute.run(slow)
        finished_when_back.append(finished.is_set())

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(caller)
            assert await trio.to_thread.run_sync(started.wait, 30)  # the call is running
            caller_scope.cancel()  # the caller gives up halfway...
            await trio.testing.wait_all_tasks_blocked()  # ...had it been let go, it would be back now
            release.set()
    finally:
        compute.close()
    assert finished_when_back == [True]  # not abandoned halfway: the session's state stays whole
