"""What an engine knows of the model it loaded."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


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
    tools: bool = False  # the chat template declares tool support (see `template_tools`)
