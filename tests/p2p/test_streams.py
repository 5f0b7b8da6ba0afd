"""Framed streams between two dinet hosts: yamux returns receive credit sparingly, never too little."""

from __future__ import annotations

import pytest
import trio
from libp2p.stream_muxer.yamux import yamux
from tests.helpers import raw_host

from dinet.p2p.streams import FramedStream, Stream, open_framed

ECHO = "/dinet-test/echo/1"
MESSAGES = 200
HIDDEN_STATE = 2428  # the bytes a chain passes on per token and hop


@pytest.fixture
def window_updates(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every WINDOW_UPDATE a stream sends, by its increment; build_host's default applies."""
    monkeypatch.delenv("PY_YAMUX_RELEASE_ON_READ", raising=False)
    sent: list[int] = []
    original = yamux.YamuxStream.send_window_update

    async def counted(self: yamux.YamuxStream, increment: int, skip_lock: bool = False) -> None:
        sent.append(increment)
        await original(self, increment, skip_lock)

    monkeypatch.setattr(yamux.YamuxStream, "send_window_update", counted)
    return sent


async def _echo(stream: Stream) -> None:
    framed = FramedStream(stream)
    while (payload := await framed.receive()) is not None:
        await framed.send_payload(payload)


async def test_small_messages_do_not_each_cost_a_window_update(window_updates: list[int]):
    async with raw_host() as server, raw_host() as client:
        server.set_handler(ECHO, _echo)
        await client.dial(server.full_addrs()[0])
        framed = await open_framed(client, server.peer_id, ECHO, 10)
        with trio.fail_after(30):
            for _ in range(10):  # the stream's set-up settles
                await framed.send_payload(b"\x01" * HIDDEN_STATE)
                await framed.receive()
            window_updates.clear()
            for i in range(MESSAGES):
                payload = i.to_bytes(4, "big") * (HIDDEN_STATE // 4)
                await framed.send_payload(payload)
                assert await framed.receive() == payload
        await framed.close()
    # Both hosts are in this process: count each side's updates for MESSAGES reads each.
    assert len(window_updates) <= 1.2 * MESSAGES, "a WINDOW_UPDATE per read: the credit setting is lost"


async def test_a_transfer_far_past_the_window_still_gets_its_credit(window_updates: list[int]):
    """With credit returned sparingly, 4 MB (16 windows) still flows both ways, intact."""
    block = bytes(range(256)) * 256  # 64 KB
    async with raw_host() as server, raw_host() as client:
        server.set_handler(ECHO, _echo)
        await client.dial(server.full_addrs()[0])
        framed = await open_framed(client, server.peer_id, ECHO, 10)
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                async def send_all() -> None:
                    for _ in range(64):
                        await framed.send_payload(block)

                nursery.start_soon(send_all)
                for _ in range(64):
                    assert await framed.receive() == block
        await framed.close()
    assert window_updates, "credit was never returned, yet 16 windows went through"
