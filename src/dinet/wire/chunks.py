"""Messages of `/dinet/chunks/1`: model cards and verified chunks of model files.

A model card is the signed description of one model version: its chunks' sizes
and hashes, the Merkle root, and GGUF metadata.

A chunk travels as a `chunk` frame (JSON) followed by one raw frame holding
exactly `size` bytes of the file; everything else is a JSON frame.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, TypeAdapter, ValidationError

from dinet.errors import MalformedMessage
from dinet.wire.ids import ModelHash, PeerId
from dinet.wire.messages import ErrorFrame, Message

MAX_CHUNK = 1 << 20  # a chunk's bytes fill one frame at most
MAX_CHUNKS = 8192  # per model: 8 GiB of 1 MiB chunks keeps a model card under the frame cap
MAX_BATCH = 16  # chunks asked for in one request
HASH_HEX = r"^[0-9a-f]{64}$"

Sha256Hex = Annotated[str, Field(pattern=HASH_HEX)]
ModelHashHex = Annotated[ModelHash, Field(pattern=HASH_HEX)]


class GGUFSummary(Message):
    architecture: str = Field(max_length=64)
    quantization: str = Field(max_length=32)
    layers: int = Field(ge=0)
    context: int = Field(ge=0)
    license: str = Field(max_length=128)
    name: str = Field(max_length=256)


class ModelCard(Message):
    """What a model version is: its bytes, chunk by chunk, and what the GGUF says."""

    model_id: str = Field(min_length=1, max_length=128)
    version: str = Field(min_length=1, max_length=64)
    model_hash: ModelHashHex  # Merkle root over chunk_hashes
    file_size: int = Field(ge=0)
    sha256: Sha256Hex
    chunk_size: int = Field(ge=1, le=MAX_CHUNK)  # the largest a chunk may be
    chunk_sizes: tuple[int, ...] = Field(max_length=MAX_CHUNKS)
    chunk_hashes: tuple[Sha256Hex, ...] = Field(max_length=MAX_CHUNKS)
    gguf: GGUFSummary
    publisher: PeerId = Field(min_length=1, max_length=128)  # peer id whose key signed it
    created_at: float


class SignedModelCard(Message):
    kind: Literal["model_card"] = "model_card"
    body: str = Field(max_length=900_000)
    signature: str = Field(max_length=256)


class ModelCardQuery(Message):
    kind: Literal["model_card_query"] = "model_card_query"
    model_hash: ModelHashHex


class ChunkRequest(Message):
    kind: Literal["chunk_request"] = "chunk_request"
    model_hash: ModelHashHex
    indices: tuple[Annotated[int, Field(ge=0, lt=MAX_CHUNKS)], ...] = Field(
        min_length=1, max_length=MAX_BATCH
    )


class ChunkHeader(Message):
    """Announces the raw frame that follows: chunk `index`, `size` bytes."""

    kind: Literal["chunk"] = "chunk"
    index: int = Field(ge=0, lt=MAX_CHUNKS)
    size: int = Field(ge=0, le=MAX_CHUNK)


ChunkQuery = Annotated[ModelCardQuery | ChunkRequest, Field(discriminator="kind")]
ChunkReply = Annotated[SignedModelCard | ChunkHeader | ErrorFrame, Field(discriminator="kind")]

_query: TypeAdapter[ModelCardQuery | ChunkRequest] = TypeAdapter(ChunkQuery)
_reply: TypeAdapter[SignedModelCard | ChunkHeader | ErrorFrame] = TypeAdapter(ChunkReply)


def decode_chunk_query(payload: bytes) -> ModelCardQuery | ChunkRequest:
    try:
        return _query.validate_json(payload)
    except ValidationError as exc:
        raise MalformedMessage(_brief(exc)) from None


def decode_chunk_reply(payload: bytes) -> SignedModelCard | ChunkHeader | ErrorFrame:
    try:
        return _reply.validate_json(payload)
    except ValidationError as exc:
        raise MalformedMessage(_brief(exc)) from None


def _brief(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "message"
    return f"invalid message at {where}: {first['msg']}"[:300]
