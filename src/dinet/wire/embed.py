"""Messages of `/dinet/embed/1`: turn texts into vectors with a node's embedding model.

A client sends one `embed` frame (the model hash and up to MAX_EMBED_INPUTS texts); the
node answers with `queued` frames while it waits for its engine, then one `embeddings`
frame (a vector per input, in order, and the node's signed receipt) or an `error` frame;
the client sends the receipt back countersigned, as on `/dinet/infer/1`. The worker pipe carries the
texts alone (`embed_texts`) and the same `embeddings` reply.

Vectors travel as base64 of little-endian float32 (exact, and a quarter of the size of
JSON numbers). Each is the mean of the model's last hidden states over the input's
tokens, normalised to length 1; an input longer than the model's window is cut to it.
"""

from __future__ import annotations

import base64
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, TypeAdapter, ValidationError, model_validator

from dinet.errors import MalformedMessage
from dinet.wire.ids import ModelHash, RequestId
from dinet.wire.messages import ErrorFrame, Message, QueuedFrame, SignedReceipt, _brief

MAX_EMBED_INPUTS = 64  # texts in one request
MAX_EMBED_CHARS = 8192  # characters of one text (the model reads at most its window of tokens)
MAX_EMBED_DIMENSIONS = 4096
_VECTOR_CHARS = (MAX_EMBED_DIMENSIONS * 4 + 2) // 3 * 4

Text = Annotated[str, Field(max_length=MAX_EMBED_CHARS)]


class EmbedTexts(Message):
    """To the embedding worker: the texts to embed."""

    kind: Literal["embed_texts"] = "embed_texts"
    inputs: tuple[Text, ...] = Field(min_length=1, max_length=MAX_EMBED_INPUTS)


class EmbedRequest(Message):
    """To a node serving an embedding model. `model_hash` names the exact model."""

    kind: Literal["embed"] = "embed"
    request_id: RequestId = Field(min_length=1, max_length=64)
    model_hash: ModelHash = Field(min_length=1, max_length=128)
    inputs: tuple[Text, ...] = Field(min_length=1, max_length=MAX_EMBED_INPUTS)

    def to_worker(self) -> EmbedTexts:
        return EmbedTexts(inputs=self.inputs)


class EmbeddingsFrame(Message):
    """A vector per input, in order, and the tokens each input counted (after cutting)."""

    kind: Literal["embeddings"] = "embeddings"
    model_hash: ModelHash = Field(default=ModelHash(""), max_length=128)  # set by the node
    dimensions: int = Field(ge=1, le=MAX_EMBED_DIMENSIONS)
    vectors: tuple[Annotated[str, Field(max_length=_VECTOR_CHARS)], ...] = Field(
        min_length=1, max_length=MAX_EMBED_INPUTS
    )
    tokens: tuple[Annotated[int, Field(ge=0)], ...] = Field(max_length=MAX_EMBED_INPUTS)
    elapsed_ms: float = Field(ge=0.0)
    # Set by a node that issues receipts: for the prompt tokens alone (no completion tokens).
    receipt: SignedReceipt | None = Field(default=None, exclude_if=lambda v: v is None)

    @model_validator(mode="after")
    def _consistent(self) -> EmbeddingsFrame:
        if len(self.tokens) != len(self.vectors):
            raise ValueError("tokens and vectors differ in length")
        for i, text in enumerate(self.vectors):
            try:
                raw = base64.b64decode(text, validate=True)
            except ValueError:
                raise ValueError(f"vectors.{i} is not base64") from None
            if len(raw) != 4 * self.dimensions:
                raise ValueError(f"vectors.{i} has {len(raw) // 4} numbers, not {self.dimensions}")
            if not np.isfinite(np.frombuffer(raw, dtype="<f4")).all():
                raise ValueError(f"vectors.{i} holds a number that is not finite")
        return self

    @classmethod
    def of(cls, vectors: np.ndarray, tokens: list[int], elapsed_ms: float) -> EmbeddingsFrame:
        """From an (n, dimensions) array."""
        rows = np.ascontiguousarray(vectors, dtype="<f4")
        return cls(
            dimensions=rows.shape[1],
            vectors=tuple(base64.b64encode(row.tobytes()).decode("ascii") for row in rows),
            tokens=tuple(tokens),
            elapsed_ms=elapsed_ms,
        )

    def array(self) -> np.ndarray:
        """The vectors as float32, shape (n, dimensions)."""
        rows = [np.frombuffer(base64.b64decode(v), dtype="<f4") for v in self.vectors]
        return np.stack(rows).astype(np.float32)


def decode_embed_texts(payload: bytes) -> EmbedTexts:
    try:
        return EmbedTexts.model_validate_json(payload)
    except ValidationError as exc:
        raise MalformedMessage(_brief(exc)) from None


def decode_embed_request(payload: bytes) -> EmbedRequest:
    try:
        return EmbedRequest.model_validate_json(payload)
    except ValidationError as exc:
        raise MalformedMessage(_brief(exc)) from None


EmbedReply = Annotated[EmbeddingsFrame | ErrorFrame | QueuedFrame, Field(discriminator="kind")]
_embed_reply: TypeAdapter[EmbeddingsFrame | ErrorFrame | QueuedFrame] = TypeAdapter(EmbedReply)


def decode_embed_reply(payload: bytes) -> EmbeddingsFrame | ErrorFrame | QueuedFrame:
    """A node's (or worker's) frame, by its `kind`."""
    try:
        return _embed_reply.validate_json(payload)
    except ValidationError as exc:
        raise MalformedMessage(_brief(exc)) from None
