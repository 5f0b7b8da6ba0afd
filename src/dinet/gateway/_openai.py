"""The OpenAI request and response shapes the gateway speaks, and their translation.

Requests are parsed leniently where the OpenAI API is lenient (unknown fields are
ignored, as OpenAI's own SDKs add new ones often) and refused with a RequestError
naming the field where a request asks for something dinet does not do (n > 1,
logprobs, tools, images, echo).
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dinet.client.ask import Answer
from dinet.client.vote import MAX_REPLICAS
from dinet.errors import RequestError
from dinet.wire.messages import ChatMessage, GenerationParams

Kind = Literal["chat", "completion"]
M = TypeVar("M", bound=BaseModel)


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _TextPart(_Lenient):
    type: Literal["text"]
    text: str


class _InMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[_TextPart] | None = None

    def to_wire(self) -> ChatMessage:
        if isinstance(self.content, list):
            text = "".join(part.text for part in self.content)
        else:
            text = self.content or ""
        role = "system" if self.role == "developer" else self.role
        return ChatMessage(role=role, content=text)


class _StreamOptions(_Lenient):
    include_usage: bool = False


class DinetOptions(BaseModel):
    """The request's own `dinet` field: what dinet does beyond the OpenAI API."""

    model_config = ConfigDict(extra="forbid")
    replicas: int = Field(default=1, ge=1, le=MAX_REPLICAS)  # >1: ask that many peers, keep the majority


class _Common(_Lenient):
    model: str = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    stop: str | list[str] | None = None
    n: Literal[1] = 1
    stream: bool = False
    stream_options: _StreamOptions | None = None
    logprobs: Literal[False, None] = None
    # dinet's own: true answers through a chain of pipeline stages, false only from
    # whole-model peers; unset, a chain is used only when no peer holds the whole model.
    dinet_sharded: bool | None = None
    dinet: DinetOptions = DinetOptions()


class ChatRequest(_Common):
    messages: list[_InMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: Literal[None] = None
    functions: Literal[None] = None


class CompletionRequest(_Common):
    prompt: str | list[str]
    echo: Literal[False] = False
    suffix: Literal[None] = None
    best_of: Literal[1, None] = None
    logprobs: Literal[0, None] = None  # type: ignore[assignment]


Request = ChatRequest | CompletionRequest


def parse_request(kind: Kind, body: object) -> Request:
    """A validated request, or RequestError naming the first bad field."""
    if kind == "chat":
        return validated(ChatRequest, body)
    return validated(CompletionRequest, body)


def validated(model: type[M], body: object) -> M:
    """`body` as a `model`, or RequestError naming the first bad field (any API's request)."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RequestError(f"invalid value for {where or 'body'}: {first['msg']}", where or None) from None


def refuse_unsupported(body: object, refused: Mapping[str, tuple[tuple[object, ...], str]]) -> None:
    """RequestError naming the first field of `refused` the body sets to a value other than
    those that ask for nothing (null, an empty list...): dinet never ignores what it cannot do."""
    if not isinstance(body, dict):
        return
    for field, (harmless, why) in refused.items():
        if field in body and body[field] not in harmless:
            raise RequestError(f"{field}: {why}", field)


def generation_params(request: Request, default_max_tokens: int) -> GenerationParams:
    """What to ask the network. OpenAI's defaults: temperature 1, a fresh seed when none is given."""
    max_tokens = request.max_tokens
    if isinstance(request, ChatRequest) and request.max_completion_tokens is not None:
        max_tokens = request.max_completion_tokens
    stop = request.stop if isinstance(request.stop, list) else [request.stop] if request.stop else []
    temperature = 1.0 if request.temperature is None else request.temperature
    seed = request.seed if request.seed is not None else random_seed()
    fields: dict[str, Any] = {
        "max_tokens": max_tokens or default_max_tokens,
        "temperature": float(temperature),
        "top_p": 1.0 if request.top_p is None else float(request.top_p),
        "seed": seed,
        "stop": tuple(stop),
    }
    if isinstance(request, ChatRequest):
        fields["messages"] = tuple(m.to_wire() for m in request.messages)
    else:
        prompts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
        if len(prompts) != 1:
            raise RequestError("give exactly one prompt (batches are not supported)", "prompt")
        fields["prompt"] = prompts[0]
    return checked_params(fields)


def checked_params(fields: dict[str, Any], names: Mapping[str, str] | None = None) -> GenerationParams:
    """GenerationParams from `fields`, or RequestError naming the request's field; `names`
    maps GenerationParams' field names to the API's own where they differ."""
    try:
        return GenerationParams(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = str(first["loc"][0]) if first["loc"] else None
        if param is not None and names:
            param = names.get(param, param)
        raise RequestError(f"invalid value for {param or 'request'}: {first['msg']}", param) from None


def random_seed() -> int:
    """A fresh seed, for an API that has none or a request that gives none."""
    return secrets.randbelow(2**63)


def new_id(kind: Kind) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex


def usage(answer: Answer) -> dict[str, int]:
    u = answer.usage
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    }


def dinet_extra(answer: Answer) -> dict[str, object]:
    """The extra `dinet` field: who served the answer, and how fast."""
    return {
        "peer_id": answer.peer_id,
        "model_hash": answer.model_hash,
        "ttft_ms": round(answer.ttft_ms, 2),
        "tokens_per_s": round(answer.tokens_per_s, 2),
        "peers_tried": list(answer.peers_tried),
        "chain": list(answer.chain),
        # {verified: true|false|null, verifier, bad_positions, ...}; null when not checked
        "verification": answer.verification.as_json() if answer.verification else None,
    }


def full_response(
    kind: Kind, response_id: str, created: int, answer: Answer, extra: dict[str, object] | None = None
) -> dict[str, object]:
    if kind == "chat":
        choice: dict[str, object] = {
            "index": 0,
            "message": {"role": "assistant", "content": answer.text},
            "finish_reason": answer.finish_reason,
            "logprobs": None,
        }
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": answer.text, "finish_reason": answer.finish_reason, "logprobs": None}
        obj = "text_completion"
    return {
        "id": response_id,
        "object": obj,
        "created": created,
        "model": answer.model_id,
        "system_fingerprint": answer.model_hash[:16],
        "choices": [choice],
        "usage": usage(answer),
        "dinet": {**dinet_extra(answer), **(extra or {})},
    }


def chunk(
    kind: Kind,
    response_id: str,
    created: int,
    model: str,
    text: str | None,
    *,
    first: bool = False,
    finish_reason: str | None = None,
) -> dict[str, object]:
    """One streamed chunk: some text, or the closing one with `finish_reason`."""
    if kind == "chat":
        delta: dict[str, str] = {}
        if first:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        choice: dict[str, object] = {
            "index": 0,
            "delta": delta,
            "finish_reason": finish_reason,
            "logprobs": None,
        }
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text or "", "finish_reason": finish_reason, "logprobs": None}
        obj = "text_completion"
    return {"id": response_id, "object": obj, "created": created, "model": model, "choices": [choice]}


def now() -> int:
    return int(time.time())


def sse(event: str, payload: Mapping[str, object]) -> bytes:
    """One server-sent event named by an `event:` line, as Anthropic's API and OpenAI's
    Responses API send them (the chat API's chunks go without a name)."""
    return f"event: {event}\ndata: ".encode() + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"
