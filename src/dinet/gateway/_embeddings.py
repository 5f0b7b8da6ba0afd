"""Embeddings in the shapes of OpenAI's `POST /v1/embeddings` and Ollama's `POST /api/embed`
(and its older `POST /api/embeddings`), answered by `dinet.client.embed`.

    {"model": "all-minilm-l6-v2", "input": ["a", "b"], "encoding_format": "base64"}

Fields dinet cannot honour are refused by name, never ignored: token arrays as input,
`dimensions` other than the model's own (the vectors are not shortened), and Ollama's
`truncate: false` for an input that the model's window cut. A field OpenAI does not have
is refused; one Ollama does not have is ignored, as on the gateway's other Ollama endpoints.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from dinet.client.embed import Embeddings
from dinet.errors import ModelNotFound, RequestError
from dinet.gateway._ollama import find_model
from dinet.gateway._openai import validated
from dinet.wire.embed import MAX_EMBED_INPUTS

Models = Sequence[Mapping[str, object]]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OpenAIEmbeddingsRequest(_Strict):
    model: str = Field(min_length=1, max_length=200)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = Field(default=None, max_length=256)


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")  # as the gateway's other Ollama endpoints


class OllamaEmbedRequest(_Lenient):
    model: str = Field(min_length=1, max_length=200)
    input: str | list[str]
    truncate: bool = True
    options: dict[str, Any] | None = None  # sampling options: nothing to sample in an embedding
    keep_alive: str | int | float | None = None  # peers keep their models loaded anyway
    dimensions: int | None = Field(default=None, ge=1)


class OllamaEmbeddingsRequest(_Lenient):
    """The older endpoint: one `prompt`, one `embedding` back."""

    model: str = Field(min_length=1, max_length=200)
    prompt: str
    options: dict[str, Any] | None = None
    keep_alive: str | int | float | None = None


def embedding_model(name: str, models: Models) -> Mapping[str, object]:
    """The network's entry for `name`, if it is a model to embed with; else ModelNotFound
    (no peer offers it) or RequestError (a model that generates text)."""
    entry = find_model(name, models)
    if entry is None:
        embedders = sorted(str(m["id"]) for m in models if m.get("task") == "embed")
        offered = f"; embedding models offered: {', '.join(embedders)}" if embedders else ""
        raise ModelNotFound(f"no peer offers model {name!r}{offered}")
    if entry.get("task") != "embed":
        raise RequestError(f"model: {entry['id']} generates text; it makes no embeddings", "model")
    return entry


def texts(value: str | list[str] | list[int] | list[list[int]]) -> list[str]:
    """The input as a list of texts; RequestError for token arrays or an empty list."""
    items = [value] if isinstance(value, str) else value
    if not items:
        raise RequestError("input: give at least one text", "input")
    if not all(isinstance(t, str) for t in items):
        raise RequestError("input: token arrays are not supported by dinet: send texts", "input")
    if len(items) > MAX_EMBED_INPUTS:
        raise RequestError(f"input: at most {MAX_EMBED_INPUTS} texts in one request", "input")
    return [str(t) for t in items]


def check_dimensions(dimensions: int | None, entry: Mapping[str, object]) -> None:
    own = entry.get("dimensions")
    if dimensions is not None and dimensions != own:
        raise RequestError(
            f"dimensions: {entry['id']} makes vectors of {own} numbers and dinet does not shorten them",
            "dimensions",
        )


def parse_openai(body: object, models: Models) -> tuple[OpenAIEmbeddingsRequest, list[str]]:
    request = validated(OpenAIEmbeddingsRequest, body)
    entry = embedding_model(request.model, models)
    check_dimensions(request.dimensions, entry)
    return request, texts(request.input)


def openai_response(request: OpenAIEmbeddingsRequest, result: Embeddings) -> dict[str, object]:
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": _encoded(row, request.encoding_format)}
            for i, row in enumerate(result.vectors)
        ],
        "model": request.model,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
        "dinet": dinet_extra(result),
    }


def parse_ollama(body: object, models: Models) -> tuple[OllamaEmbedRequest, str, list[str]]:
    request = validated(OllamaEmbedRequest, body)
    entry = embedding_model(request.model, models)
    check_dimensions(request.dimensions, entry)
    return request, str(entry["id"]), texts(request.input)


def parse_ollama_legacy(body: object, models: Models) -> tuple[str, str]:
    request = validated(OllamaEmbeddingsRequest, body)
    return str(embedding_model(request.model, models)["id"]), request.prompt


def ollama_response(
    request: OllamaEmbedRequest, entry_context: int, result: Embeddings, started: float
) -> dict[str, object]:
    if not request.truncate and any(n >= entry_context for n in result.tokens):
        raise RequestError("input: a text is longer than the model's context (truncate is false)", "input")
    elapsed_ns = int((time.perf_counter() - started) * 1e9)
    return {
        "model": request.model,
        "embeddings": result.vectors.tolist(),
        "total_duration": elapsed_ns,
        "load_duration": 0,
        "prompt_eval_count": result.prompt_tokens,
        "dinet": dinet_extra(result),
    }


def dinet_extra(result: Embeddings) -> dict[str, object]:
    check = result.verification
    return {
        "peer_id": result.peer_id,
        "model_hash": result.model_hash,
        "dimensions": result.dimensions,
        "verification": None
        if check is None
        else {
            "verified": check.verified,
            "verifier": check.verifier,
            "worst_cosine": check.worst_cosine,
            "bad_inputs": list(check.bad_inputs),
            "error": check.error,
        },
    }


def _encoded(row: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":  # as OpenAI's: little-endian float32
        return base64.b64encode(np.ascontiguousarray(row, dtype="<f4").tobytes()).decode("ascii")
    return [float(x) for x in row]
