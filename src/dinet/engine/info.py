"""What a worker tells its owner once the model is loaded."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from dinet.engine.sandbox import SandboxStatus

CANCEL_PAYLOAD = b'{"kind":"cancel"}'
"""Sent by the owner to end the running request early (the worker's only other input)."""


class ModelInfo(BaseModel):
    """The loaded model, as read from its GGUF metadata."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    model_id: str = Field(min_length=1, max_length=128)
    architecture: str
    quantization: str  # "q4_1", from general.file_type
    n_ctx: int = Field(ge=1)  # the context this worker runs with
    n_ctx_train: int = Field(ge=0)
    n_layers: int = Field(ge=0)
    n_vocab: int = Field(ge=1)
    has_chat_template: bool


class WorkerReady(BaseModel):
    """The first frame a worker writes: the model is loaded, requests may follow."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    kind: Literal["ready"] = "ready"
    pid: int
    model: ModelInfo
    threads: int = Field(ge=1)
    extra_bufts: bool  # False when the AMX workaround is in force
    sandbox: SandboxStatus | None = None  # None: started without the sandbox launcher
