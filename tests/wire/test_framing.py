import struct

import pytest

from dinet.errors import FrameTooLarge, MalformedMessage
from dinet.wire.framing import FrameReader, encode_frame


def reader_over(data: bytes, max_size: int = 1024, piece: int = 3) -> FrameReader:
    """A reader fed a few bytes at a time, as a real stream may deliver them."""
    view = memoryview(data)
    position = 0

    async def read_some(n: int) -> bytes:
        nonlocal position
        chunk = bytes(view[position : position + min(n, piece)])
        position += len(chunk)
        return chunk

    return FrameReader(read_some, max_size)


async def test_frames_round_trip_in_order_across_small_reads():
    payloads = [b"", b"a", b"hello" * 50]
    reader = reader_over(b"".join(encode_frame(p) for p in payloads))
    assert [await reader.read_frame() for _ in payloads] == payloads
    assert await reader.read_frame() is None


async def test_a_length_above_the_cap_is_refused_before_reading_the_payload():
    reader = reader_over(struct.pack(">I", 10_000), max_size=1024)
    with pytest.raises(FrameTooLarge):
        await reader.read_frame()


def test_encoding_refuses_an_oversized_payload():
    with pytest.raises(FrameTooLarge):
        encode_frame(b"x" * 2000, max_size=1024)


@pytest.mark.parametrize("cut", [2, 4, 7])
async def test_a_stream_ending_inside_a_frame_is_malformed(cut):
    data = encode_frame(b"abcdef")[:cut]
    with pytest.raises(MalformedMessage):
        await reader_over(data).read_frame()
