"""The worker protocol: what passes between a node and an engine worker process.

Both ways, on the worker's stdin and stdout, length-prefixed frames
(`dinet.wire.framing`) of JSON:

    worker -> node   `WorkerReady`, once, when the model is loaded
    node -> worker   `GenerationParams`; back: `TokenFrame`s, then one `EndFrame` or `ErrorFrame`
    node -> worker   `ScoreRequest` (verification); back: one `ScoresFrame` or `ErrorFrame`
    node -> worker   `EmbedTexts` (an embedding worker, `embed_process`); back: one
                     `EmbeddingsFrame` or `ErrorFrame`
    node -> worker   `CANCEL_PAYLOAD`: ends the running request after its current token,
                     still with its `EndFrame`

Requests are served one at a time, unless the worker was started with `--slots N`
(N > 1): then up to N run at once, and every frame after `WorkerReady`, both ways,
begins with one stream byte (0..N-1) naming the request it belongs to; the owner
picks a free stream for each request and frees it at the request's last reply. A
cancel for a request that has already ended is ignored, so a cancel never adds a
reply. End of stdin ends the worker. A worker that exits with `EXIT_LOAD_FAILED`
could not load the model: its owner does not try again.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dinet.engine.info import ModelInfo
from dinet.engine.sandbox import SandboxStatus
from dinet.wire.messages import ErrorFrame

CANCEL_PAYLOAD = b'{"kind":"cancel"}'
"""Sent by the owner to end the running request early."""

SCORE_PREFIX = b'{"kind":"score"'
"""How a `ScoreRequest` begins (`encode` writes `kind` first): tells it from `GenerationParams`."""

EXIT_LOAD_FAILED = 3
"""The worker's exit status when the model would not load (a final failure, never retried)."""


class WorkerReady(BaseModel):
    """The first frame a worker writes: the model is loaded, requests may follow."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    kind: Literal["ready"] = "ready"
    pid: int
    model: ModelInfo
    threads: int = Field(ge=1)
    extra_bufts: bool  # False when the AMX workaround is in force
    sandbox: SandboxStatus | None = None  # None: started without the sandbox launcher
    # An embedding worker's vector length; left out for a generating worker.
    embedding_dims: int | None = Field(default=None, ge=1, exclude_if=lambda v: v is None)


def refusal(exc: Exception) -> ErrorFrame:
    """The `bad_request` frame for a request that did not parse (`ValidationError`: where
    and why) or that the model cannot serve (any other exception: its message)."""
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "request"
        return ErrorFrame(code="bad_request", message=f"{where}: {first['msg']}"[:1000])
    return ErrorFrame(code="bad_request", message=str(exc)[:1000])
