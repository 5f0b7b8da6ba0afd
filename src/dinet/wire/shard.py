"""Messages of `/dinet/shard/1`: one pipeline stage's session, step by step.

A stage holds a contiguous range of a model's transformer blocks. The client opens a
session on one stream (`shard_open`), then sends steps: the prompt in one or more
prefill steps, then one step per generated token. A step's tensor travels as one raw
frame right after its JSON header (`shard_step`, `shard_hidden`), little-endian,
row-major; both frames go out in one write. Token ids are `i32` rows of width 1,
hidden states `f32` (exact) or `f16` rows of width `n_embd`.

The last stage answers a step with `shard_sampled`: the token it chose and the
completion frames that token releases (exactly the `token` frames of
`/dinet/infer/1`). See docs/protocol.md.

Speculative steps (`draft` in `shard_open`): the first stage follows each chosen token
with tokens it guesses (by prompt lookup, or with a draft model of the same vocabulary);
the step carries their ids to the last stage, which takes the longest run of them that
equals what it chooses itself and one token more; the next step's `keep` tells every
stage how many positions of its cache still hold.

Checked stages (`nonce` in `shard_open`): the stage keeps every step's input and output
and, asked on any stream with the session's id, signs a receipt over their digests
(`shard_receipt_query`) or, given the audit seed the open committed to, sends them all
(`shard_reveal`), for the client to replay on another holder of the same blocks. See
`dinet.wire.stage_receipt`.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field, TypeAdapter, ValidationError

from dinet.errors import MalformedMessage
from dinet.wire.framing import MAX_FRAME, encode_frame
from dinet.wire.ids import ModelHash, PeerId
from dinet.wire.messages import ErrorFrame, GenerationParams, Message, TokenFrame, encode
from dinet.wire.stage_receipt import SignedStageReceipt

TensorDType = Literal["i32", "f32", "f16"]
HiddenDType = Literal["f32", "f16"]
NUMPY_DTYPES: dict[str, np.dtype] = {
    "i32": np.dtype("<i4"),
    "f32": np.dtype("<f4"),
    "f16": np.dtype("<f2"),
}
MAX_STEP_ROWS = 4096  # a whole prompt fits the protocol; the frame cap bounds it further
MAX_DRAFT_TOKENS = 16
# "lookup": n-grams of the context; "model": the first stage's draft model (`--draft-model`).
Draft = Literal["none", "lookup", "model"]


class ShardRelay(Message):
    """Where a stage passes its outputs on: a session it may step on another stage.

    The session id is the capability: the client chose it at random for that stage.
    `addrs` let the stage dial a peer it has not met yet.
    """

    peer_id: PeerId = Field(min_length=1, max_length=128)
    session_id: str = Field(min_length=1, max_length=64)
    addrs: tuple[Annotated[str, Field(max_length=256)], ...] = Field(default=(), max_length=16)


class ShardOpen(Message):
    """Start a session. Every stage gets the request's params: the first tokenizes the
    prompt, the last samples and detokenizes; the others check and ignore them.

    With `relay` set, the stage does not answer steps with their output: it sends each
    output on as a step of the relay's session (hidden states to the next stage; the
    last stage's chosen token back to the first), and the last stage sends only its
    `shard_sampled` replies to this stream. A relay that fails is reported here as
    `relay_failed`.
    """

    kind: Literal["shard_open"] = "shard_open"
    session_id: str = Field(min_length=1, max_length=64)
    model_hash: ModelHash | None = Field(default=None, max_length=128)
    span: tuple[int, int]
    params: GenerationParams
    dtype: HiddenDType = "f32"  # of the hidden states this stage sends back
    relay: ShardRelay | None = None
    # How the first stage guesses tokens for the last to check (others ignore it).
    draft: Draft = "none"
    # Set, the stage keeps its steps and signs a receipt for them (see `shard_receipt_query`).
    nonce: str | None = Field(default=None, min_length=1, max_length=64)
    audit_commit: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")  # sha256 of the audit seed


class ShardOpened(Message):
    kind: Literal["shard_opened"] = "shard_opened"
    session_id: str
    n_embd: int = Field(ge=1)
    prompt_ids: tuple[int, ...] = ()  # from the first stage only: the tokenized prompt


class ShardStep(Message):
    """One forward step; a raw frame of `rows` rows of `dtype` follows."""

    kind: Literal["shard_step"] = "shard_step"
    session_id: str = Field(min_length=1, max_length=64)
    seq: int = Field(ge=0)  # steps of this session so far
    rows: int = Field(ge=1, le=MAX_STEP_ROWS)
    dtype: TensorDType
    # The last stage samples a token only when asked: not for the prompt's earlier chunks.
    sample: bool = True
    # Positions of the session's cache that hold, before this step's rows go in: the
    # last stage sets it on the token it sends round, so rows it refused are dropped.
    keep: int | None = Field(default=None, ge=0)
    # Token ids guessed after the step's first row: its other rows, for the last stage to check.
    draft: tuple[int, ...] = Field(default=(), max_length=MAX_DRAFT_TOKENS)


class ShardAck(Message):
    """The last stage's answer to a step that asked for no token."""

    kind: Literal["shard_ack"] = "shard_ack"
    seq: int = Field(ge=0)


class ShardHidden(Message):
    """A middle stage's output for step `seq`; a raw frame of (rows, n_embd) follows."""

    kind: Literal["shard_hidden"] = "shard_hidden"
    seq: int = Field(ge=0)
    rows: int = Field(ge=1, le=MAX_STEP_ROWS)
    dtype: HiddenDType


class ShardSampled(Message):
    """The last stage's output for step `seq`: the token chosen at completion `index`.

    `frames` are the completion frames now released (text held back for a possible
    stop string comes later); `finish_reason` is set when the completion has ended,
    and then the chosen token is not part of it if it ended the text (end of
    generation or a stop string).
    """

    kind: Literal["shard_sampled"] = "shard_sampled"
    seq: int = Field(ge=0)
    index: int = Field(ge=0)
    token_id: int = Field(ge=0)
    frames: tuple[TokenFrame, ...] = ()
    finish_reason: Literal["stop", "length"] | None = None


class ShardClose(Message):
    """End the session: the stage frees its KV cache and closes the stream."""

    kind: Literal["shard_close"] = "shard_close"
    session_id: str = Field(min_length=1, max_length=64)


class ShardReceiptQuery(Message):
    """Ask for the signed receipt of a session opened with a `nonce` (on any stream)."""

    kind: Literal["shard_receipt_query"] = "shard_receipt_query"
    session_id: str = Field(min_length=1, max_length=64)


class ShardReceipt(Message):
    kind: Literal["shard_receipt"] = "shard_receipt"
    receipt: SignedStageReceipt


class ShardReveal(Message):
    """Ask for every step of a checked session, in and out, to audit it. `seed` (hex) is
    the one whose sha256 the session was opened with."""

    kind: Literal["shard_reveal"] = "shard_reveal"
    session_id: str = Field(min_length=1, max_length=64)
    seed: str = Field(pattern=r"^[0-9a-f]{2,128}$")


class ShardRevealed(Message):
    """One step of a revealed session, as the stage took it (`rows` of `dtype`, then the
    keep, sample and guessed ids it came with) and what it gave: a raw frame of the input
    follows, then one of `out_rows` rows of `out_dtype` (hidden states, or the ids of the
    tokens chosen) unless `out_rows` is 0. One for every step of the receipt, in order."""

    kind: Literal["shard_revealed"] = "shard_revealed"
    seq: int = Field(ge=0)
    rows: int = Field(ge=1, le=MAX_STEP_ROWS)
    dtype: TensorDType
    sample: bool = True
    keep: int | None = Field(default=None, ge=0)
    draft: tuple[int, ...] = Field(default=(), max_length=MAX_DRAFT_TOKENS)
    out_rows: int = Field(ge=0, le=MAX_STEP_ROWS)
    out_dtype: TensorDType


ShardRequests = ShardOpen | ShardStep | ShardClose | ShardReceiptQuery | ShardReveal
ShardReplies = ShardOpened | ShardHidden | ShardSampled | ShardAck | ShardReceipt | ShardRevealed | ErrorFrame
ShardRequest = Annotated[ShardRequests, Field(discriminator="kind")]
ShardReply = Annotated[ShardReplies, Field(discriminator="kind")]
_requests: TypeAdapter[ShardRequests] = TypeAdapter(ShardRequest)
_replies: TypeAdapter[ShardReplies] = TypeAdapter(ShardReply)


def decode_shard_request(payload: bytes) -> ShardRequests:
    try:
        return _requests.validate_json(payload)
    except ValidationError as exc:
        raise MalformedMessage(_brief(exc)) from None


def decode_shard_reply(payload: bytes) -> ShardReplies:
    try:
        return _replies.validate_json(payload)
    except ValidationError as exc:
        raise MalformedMessage(_brief(exc)) from None


def tensor_frames(header: Message, array: npt.NDArray[np.generic]) -> bytes:
    """The header frame and the raw tensor frame, ready for one write."""
    return encode_frame(encode(header)) + encode_frame(array.tobytes())


def decode_tensor(raw: bytes, rows: int, width: int, dtype: str) -> npt.NDArray[np.generic]:
    """The (rows, width) array in `raw`, or MalformedMessage if its size disagrees."""
    np_dtype = NUMPY_DTYPES[dtype]
    if len(raw) != rows * width * np_dtype.itemsize:
        raise MalformedMessage(f"tensor of {len(raw)} bytes, expected {rows} x {width} {dtype}")
    return np.frombuffer(raw, dtype=np_dtype).reshape(rows, width)


def rows_per_frame(n_embd: int, dtype: str = "f32") -> int:
    """Most rows of hidden state one frame can carry (prefills longer go in several steps)."""
    return max(1, min(MAX_STEP_ROWS, (MAX_FRAME - 64) // (n_embd * NUMPY_DTYPES[dtype].itemsize)))


def _brief(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "message"
    return f"invalid message at {where}: {first['msg']}"[:300]
