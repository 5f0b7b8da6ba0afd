"""The runtime switch between model versions, with fake versions (named so: this is about
which version a stream lands on and when a version is closed, not about engines).
`tests/node/test_follow.py` does the same with real nodes and the real model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from dinet.node._serving import Serving
from dinet.node.manifests import load_of, offer
from dinet.node.switching import ServingSwitch, hold_version
from dinet.wire.ids import INFER_PROTOCOL, ModelHash


class FakeVersions:
    """Versions whose one handler waits until the test lets its stream end."""

    def __init__(self) -> None:
        self.served: list[tuple[str, int]] = []  # (model hash, stream number) as streams arrive
        self.closed: list[str] = []
        self.release = trio.Event()
        self.unservable: set[str] = set()

    @asynccontextmanager
    async def open(self, model_hash: ModelHash | None) -> AsyncIterator[Serving]:
        name = model_hash or "v1"

        async def handle(stream: object) -> None:
            self.served.append((name, len(self.served)))
            await self.release.wait()

        try:
            yield Serving(
                "tiny",
                ModelHash(name),
                {INFER_PROTOCOL: handle},  # type: ignore[dict-item]
                None if name in self.unservable else offer("tiny", ModelHash(name), "f32", 256, 1),
                lambda: {"tokens_per_s": 0.0, "ttft_ms": 0.0, "load": load_of(0, 0)},
                available=lambda: name not in self.unservable,
                state=lambda: None,
                busy=lambda: False,
            )
        finally:
            self.closed.append(name)


async def test_a_stream_in_flight_keeps_its_version_until_it_ends_and_new_ones_go_to_the_new():
    fake = FakeVersions()
    async with trio.open_nursery() as versions:
        switch = ServingSwitch(versions, fake.open, await versions.start(hold_version, fake.open, None))
        node = switch.serving
        versions.start_soon(node.background[0], None)  # as the node's _run would, with its joiner
        handle = node.handlers[INFER_PROTOCOL]
        async with trio.open_nursery() as streams:
            streams.start_soon(handle, "stream on v1")
            await trio.testing.wait_all_tasks_blocked()
            assert await switch.switch_to(ModelHash("v2"))
            assert (node.model_hash, node.offer.model_hash) == ("v2", "v2")  # type: ignore[union-attr]
            streams.start_soon(handle, "stream on v2")
            await trio.testing.wait_all_tasks_blocked()
            assert fake.served == [("v1", 0), ("v2", 1)]
            assert fake.closed == []  # v1 still has its stream
            fake.release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert fake.closed == ["v1"]  # closed once its last stream ended, v2 still served
        versions.cancel_scope.cancel()
    assert fake.closed == ["v1", "v2"]


async def test_a_version_that_cannot_serve_is_closed_and_the_old_one_kept():
    fake = FakeVersions()
    fake.unservable.add("broken")
    async with trio.open_nursery() as versions:
        switch = ServingSwitch(versions, fake.open, await versions.start(hold_version, fake.open, None))
        versions.start_soon(switch.serving.background[0], None)
        assert not await switch.switch_to(ModelHash("broken"))
        await trio.testing.wait_all_tasks_blocked()
        assert switch.serving.model_hash == "v1" and fake.closed == ["broken"]
        versions.cancel_scope.cancel()
