"""Framed streams between two dinet hosts: yamux returns receive credit sparingly, never too
little, and a send that is cancelled never breaks the connection."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from libp2p.stream_muxer.yamux import yamux
from tests.helpers import raw_host

from dinet.errors import PeerError
from dinet.p2p import _yamux
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


async def test_a_send_cancelled_when_its_turn_comes_does_not_break_the_connection():
    """A frame is encrypted once it has the connection's write turn: a cancel that lands
    between that turn and the socket must not drop it, or the Noise nonces of the two
    sides part, the peer can read nothing more, and every stream on the connection dies."""
    async with raw_host() as server, raw_host() as client:
        server.set_handler(ECHO, _echo)
        await client.dial(server.full_addrs()[0])
        framed = await open_framed(client, server.peer_id, ECHO, 10)
        turn = framed.stream._raw.muxed_conn._write_lock  # type: ignore[attr-defined]  # whose frame goes out next
        with trio.fail_after(30):
            await framed.send_payload(b"first")  # the stream has its send credit
            assert await framed.receive() == b"first"
            async with trio.open_nursery() as nursery:
                await trio.testing.wait_all_tasks_blocked(0.05)  # nothing else is writing
                await turn.acquire()  # another frame is going out
                cancelled = trio.CancelScope()

                async def send_in_turn() -> None:
                    with cancelled:
                        await framed.send_payload(b"waited")

                nursery.start_soon(send_in_turn)
                await trio.testing.wait_all_tasks_blocked(0.05)
                assert turn.statistics().tasks_waiting == 1  # ours, waiting for its turn
                turn.release()  # its turn comes...
                cancelled.cancel()  # ...and its caller gives up before it runs
            await framed.send_payload(b"after")
            echoed = [await framed.receive(), await framed.receive()]
        await framed.close()
    assert echoed == [b"waited", b"after"]  # the cancelled frame went out whole, and nothing broke


async def test_a_frame_that_cannot_be_sent_in_time_gives_up_the_connection(monkeypatch: pytest.MonkeyPatch):
    """The write that may not be cancelled is still bounded: past the limit its connection
    is closed (a part frame may be out) and the sender gets a typed error, not a hang."""
    async with raw_host() as server, raw_host() as client:
        server.set_handler(ECHO, _echo)
        await client.dial(server.full_addrs()[0])
        framed = await open_framed(client, server.peer_id, ECHO, 10)
        monkeypatch.setattr(_yamux, "FRAME_SEND_LIMIT_S", 0.0)  # every frame is too late
        with trio.fail_after(30), pytest.raises(PeerError):
            await framed.send_payload(b"late")
        monkeypatch.undo()
        with trio.fail_after(30):
            while client.is_connected(server.peer_id):
                await trio.sleep(0.05)  # the broken connection goes...
            await client.dial(server.full_addrs()[0])  # ...and a new one works
            again = await open_framed(client, server.peer_id, ECHO, 10)
            await again.send_payload(b"on time")
            assert await again.receive() == b"on time"
        await again.close()


async def test_a_failing_handler_costs_its_own_stream_only(caplog: pytest.LogCaptureFixture):
    """A handler that raises resets its stream; the connection and the host serve on."""
    broken = "/dinet-test/broken/1"

    async def fail(stream: Stream) -> None:
        await FramedStream(stream).receive()
        raise ValueError("a bug in a handler")

    async with raw_host() as server, raw_host() as client:
        server.set_handler(ECHO, _echo)
        server.set_handler(broken, fail)
        await client.dial(server.full_addrs()[0])
        with trio.fail_after(30):
            doomed = await open_framed(client, server.peer_id, broken, 10)
            await doomed.send_payload(b"hello")
            try:
                ended = await doomed.receive()  # a reset reads as the end, or as a broken stream
            except PeerError:
                ended = None
            assert ended is None
            framed = await open_framed(client, server.peer_id, ECHO, 10)
            await framed.send_payload(b"still here")
            assert await framed.receive() == b"still here"
        await framed.close()
        assert client.is_connected(server.peer_id)
    assert "a bug in a handler" in caplog.text
