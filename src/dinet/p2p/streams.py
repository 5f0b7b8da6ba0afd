"""Frames over a libp2p stream, with the library's stream errors turned into ours."""

from __future__ import annotations

from collections.abc import Sequence

import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamEOF, StreamError
from libp2p.peer.id import ID

from dinet.errors import PeerError, PeerUnreachable
from dinet.wire.framing import MAX_FRAME, FrameReader, encode_frame
from dinet.wire.messages import Message, encode


class FramedStream:
    """One libp2p stream carrying length-prefixed frames in both directions."""

    def __init__(self, stream: INetStream, max_size: int = MAX_FRAME) -> None:
        self.stream = stream
        self._reader = FrameReader(self._read_some, max_size)
        self._max_size = max_size
        # A relayed shard session writes to its client's stream from another stream's
        # task: one write at a time keeps frames whole.
        self._writing = trio.Lock()

    @property
    def remote_peer(self) -> str:
        return self.stream.muxed_conn.peer_id.to_base58()

    async def _read_some(self, n: int) -> bytes:
        try:
            return await self.stream.read(n)
        except StreamEOF:
            return b""
        except StreamError as exc:
            raise PeerError(f"stream broke: {type(exc).__name__}") from None

    async def receive(self) -> bytes | None:
        """The next frame, or None when the peer closed the stream between frames."""
        return await self._reader.read_frame()

    async def send_payload(self, payload: bytes) -> None:
        await self.send_framed(encode_frame(payload, self._max_size))

    async def send_framed(self, data: bytes) -> None:
        """Bytes that already hold whole frames (`encode_frame`), in one write."""
        try:
            async with self._writing:
                await self.stream.write(data)
        except StreamError as exc:
            raise PeerError(f"stream broke: {type(exc).__name__}") from None

    async def send(self, message: Message) -> None:
        await self.send_payload(encode(message))

    async def send_all(self, messages: Sequence[Message]) -> None:
        """Several frames in one write: py-libp2p's cost is per write, not per byte."""
        await self.send_framed(b"".join(encode_frame(encode(m), self._max_size) for m in messages))

    async def close(self) -> None:
        try:
            await self.stream.close()
        except StreamError:
            pass  # already gone: closing is best effort

    async def reset(self) -> None:
        try:
            await self.stream.reset()
        except StreamError:
            pass  # already gone


async def open_framed(host: IHost, peer_id: str, protocol: str, timeout: float) -> FramedStream:
    """A new stream to `peer_id` for `protocol`; PeerUnreachable if it does not open in time."""
    try:
        with trio.fail_after(timeout):
            stream = await host.new_stream(ID.from_base58(peer_id), [TProtocol(protocol)])
    except trio.TooSlowError:
        raise PeerUnreachable(f"{peer_id} did not open a {protocol} stream in {timeout:g} s") from None
    except Exception as exc:  # libp2p raises assorted types when a stream cannot open
        raise PeerUnreachable(f"cannot open a {protocol} stream to {peer_id}: {exc}") from None
    return FramedStream(stream)
