"""Streams to and from peers, with the library's stream errors turned into ours, and frames over them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import trio
from libp2p.abc import INetStream
from libp2p.network.stream.exceptions import StreamEOF, StreamError

from dinet.errors import PeerError
from dinet.wire.framing import MAX_FRAME, FrameReader, encode_frame
from dinet.wire.ids import PeerId
from dinet.wire.messages import Message, encode

if TYPE_CHECKING:
    from dinet.p2p.host import PeerHost


class Stream:
    """One stream of one protocol between this host and a peer."""

    def __init__(self, raw: INetStream) -> None:
        self._raw = raw

    @property
    def remote_peer(self) -> PeerId:
        return PeerId(self._raw.muxed_conn.peer_id.to_base58())

    async def read(self, n: int) -> bytes:
        """Up to `n` bytes; b"" once the peer has closed its side."""
        try:
            return await self._raw.read(n)
        except StreamEOF:
            return b""
        except StreamError as exc:
            raise PeerError(f"stream broke: {type(exc).__name__}") from None

    async def write(self, data: bytes) -> None:
        try:
            await self._raw.write(data)
        except StreamError as exc:
            raise PeerError(f"stream broke: {type(exc).__name__}") from None

    async def close(self) -> None:
        """Close our side (the peer reads the end); best effort."""
        try:
            await self._raw.close()
        except StreamError:
            pass  # already gone

    async def reset(self) -> None:
        """Abort the stream both ways; best effort."""
        try:
            await self._raw.reset()
        except StreamError:
            pass  # already gone


Handler = Callable[[Stream], Awaitable[None]]  # serves one inbound stream of a protocol


class FramedStream:
    """One stream carrying length-prefixed frames in both directions."""

    def __init__(self, stream: Stream, max_size: int = MAX_FRAME) -> None:
        self.stream = stream
        self._reader = FrameReader(stream.read, max_size)
        self._max_size = max_size
        # A relayed shard session writes to its client's stream from another stream's
        # task: one write at a time keeps frames whole.
        self._writing = trio.Lock()

    @property
    def remote_peer(self) -> PeerId:
        return self.stream.remote_peer

    async def receive(self) -> bytes | None:
        """The next frame, or None when the peer closed the stream between frames."""
        return await self._reader.read_frame()

    async def send_payload(self, payload: bytes) -> None:
        await self.send_framed(encode_frame(payload, self._max_size))

    async def send_framed(self, data: bytes) -> None:
        """Bytes that already hold whole frames (`encode_frame`), in one write."""
        async with self._writing:
            await self.stream.write(data)

    async def send(self, message: Message) -> None:
        await self.send_payload(encode(message))

    async def send_all(self, messages: Sequence[Message]) -> None:
        """Several frames in one write: py-libp2p's cost is per write, not per byte."""
        await self.send_framed(b"".join(encode_frame(encode(m), self._max_size) for m in messages))

    async def close(self) -> None:
        await self.stream.close()

    async def reset(self) -> None:
        await self.stream.reset()


async def open_framed(host: PeerHost, peer_id: PeerId, protocol: str, timeout: float) -> FramedStream:
    """A new stream to `peer_id` for `protocol`; PeerUnreachable if it does not open in time."""
    return FramedStream(await host.open_stream(peer_id, protocol, timeout))
