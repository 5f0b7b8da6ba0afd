"""Length-prefixed frames: a 4-byte big-endian length, then that many bytes.

The same framing carries the libp2p protocols and the pipe between a node and
its engine worker. A length above the cap is refused before any payload is read,
so a peer cannot make us buffer more than `max_size` bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable

from dinet.errors import FrameTooLarge, MalformedMessage

MAX_FRAME = 1 << 20  # 1 MiB: a 2048-token prompt is ~10 KB of JSON
_HEADER = struct.Struct(">I")

ReadSome = Callable[[int], Awaitable[bytes]]


def encode_frame(payload: bytes, max_size: int = MAX_FRAME) -> bytes:
    if len(payload) > max_size:
        raise FrameTooLarge(f"frame of {len(payload)} bytes exceeds the cap of {max_size}")
    return _HEADER.pack(len(payload)) + payload


class FrameReader:
    """Reads whole frames from any byte source that returns some bytes per call.

    `read_some(n)` returns up to n bytes, or b"" at end of stream.
    """

    def __init__(self, read_some: ReadSome, max_size: int = MAX_FRAME) -> None:
        self._read_some = read_some
        self._max_size = max_size
        self._buffer = bytearray()

    async def _fill(self, size: int) -> bool:
        while len(self._buffer) < size:
            chunk = await self._read_some(max(size - len(self._buffer), 65536))
            if not chunk:
                return False
            self._buffer += chunk
        return True

    def has_frame(self) -> bool:
        """Whether a whole frame is already buffered, so read_frame() will not wait."""
        if len(self._buffer) < _HEADER.size:
            return False
        size: int = _HEADER.unpack_from(self._buffer)[0]
        return len(self._buffer) >= _HEADER.size + size

    async def read_frame(self) -> bytes | None:
        """The next frame's payload, or None at a clean end between frames."""
        if not await self._fill(_HEADER.size):
            if self._buffer:
                raise MalformedMessage("stream ended inside a frame header")
            return None
        (size,) = _HEADER.unpack_from(self._buffer)
        if size > self._max_size:
            raise FrameTooLarge(f"frame of {size} bytes exceeds the cap of {self._max_size}")
        if not await self._fill(_HEADER.size + size):
            raise MalformedMessage(f"stream ended inside a frame of {size} bytes")
        payload = bytes(self._buffer[_HEADER.size : _HEADER.size + size])
        del self._buffer[: _HEADER.size + size]
        return payload
