"""/dinet/shard/1 messages: strict decoding and tensor frames that check their own size."""

from __future__ import annotations

import numpy as np
import pytest

from dinet.errors import MalformedMessage
from dinet.wire.framing import MAX_FRAME, FrameReader
from dinet.wire.messages import ErrorFrame, GenerationParams
from dinet.wire.shard import (
    ShardOpen,
    ShardStep,
    decode_shard_reply,
    decode_shard_request,
    decode_tensor,
    rows_per_frame,
    tensor_frames,
)


async def test_a_step_travels_as_a_header_and_one_raw_frame():
    hidden = np.arange(3 * 8, dtype=np.float32).reshape(3, 8)
    data = tensor_frames(ShardStep(session_id="s", seq=2, rows=3, dtype="f32"), hidden)
    chunks = [data]

    async def read_some(n: int) -> bytes:
        return chunks.pop() if chunks else b""

    reader = FrameReader(read_some)
    header = decode_shard_request(await reader.read_frame() or b"")
    assert isinstance(header, ShardStep) and header.sample
    raw = await reader.read_frame()
    assert raw is not None
    np.testing.assert_array_equal(decode_tensor(raw, header.rows, 8, header.dtype), hidden)


def test_a_tensor_of_the_wrong_size_is_malformed():
    raw = np.zeros((2, 8), dtype=np.float16).tobytes()
    with pytest.raises(MalformedMessage):
        decode_tensor(raw, 2, 8, "f32")


def test_unknown_fields_kinds_and_ranges_are_refused():
    opened = ShardOpen(session_id="s", span=(0, 10), params=GenerationParams(prompt="hi"))
    assert decode_shard_request(opened.model_dump_json().encode()) == opened
    for bad in (
        b'{"kind": "shard_step", "session_id": "s", "seq": 0, "rows": 1, "dtype": "f64"}',
        b'{"kind": "shard_step", "session_id": "s", "seq": -1, "rows": 1, "dtype": "f32"}',
        b'{"kind": "shard_step", "session_id": "s", "seq": 0, "rows": 0, "dtype": "f32"}',
        b'{"kind": "shard_close", "session_id": "s", "extra": 1}',
        b'{"kind": "infer"}',
        b"not json",
    ):
        with pytest.raises(MalformedMessage):
            decode_shard_request(bad)
    error = decode_shard_reply(b'{"kind": "error", "code": "unknown_session", "message": "gone"}')
    assert isinstance(error, ErrorFrame) and error.code == "unknown_session"


def test_a_frame_of_hidden_rows_fits_the_cap():
    rows = rows_per_frame(576)
    assert rows * 576 * 4 <= MAX_FRAME < (rows + 1) * 576 * 4 + 64
    assert rows_per_frame(576, "f16") >= 2 * rows - 1
