"""Anthropic's Messages API (`POST /v1/messages`): its request and response shapes, and
their translation.

Requests are parsed strictly, as Anthropic's own API parses them: an unknown field is
refused, and so is one dinet cannot honour yet (tools, thinking, top_k, images and
documents in content, a prefilled assistant turn), each with a 400 that names it.

dinet's answer ends "stop" or "length" and does not say which stop string, if any,
ended it (the node strips the string), so `stop_reason` is `end_turn` or `max_tokens`,
never `stop_sequence`: see `stop_reason`.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dinet.client.ask import Answer
from dinet.errors import RequestError
from dinet.gateway import _openai as oa
from dinet.gateway._errors import ApiError
from dinet.gateway._tools import WHERE_TOOLS
from dinet.wire.messages import GenerationParams

# Fields dinet cannot honour yet: the values that ask for nothing, and why any other is refused.
_REFUSED: dict[str, tuple[tuple[object, ...], str]] = {
    "tools": ((None, []), WHERE_TOOLS),
    "tool_choice": ((None,), WHERE_TOOLS),
    "thinking": ((None, {"type": "disabled"}), "extended thinking is not supported by dinet"),
    "top_k": ((None,), "top_k sampling is not supported by dinet yet"),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Block(BaseModel):
    """A content block as sent: any type is read, so that a refusal can name it."""

    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None
    cache_control: object = None  # a prompt-caching hint: it never changes the answer

    def text_at(self, where: str) -> str:
        if self.type != "text":
            raise RequestError(
                f"{where}: {self.type!r} content blocks are not supported (dinet's models read text only)",
                where,
            )
        if self.model_extra:
            field = f"{where}.{next(iter(self.model_extra))}"
            raise RequestError(f"{field}: not supported by dinet", field)
        if self.text is None:
            raise RequestError(f"{where}.text: a text block needs its text", f"{where}.text")
        return self.text


class _Message(_Strict):
    role: Literal["user", "assistant"]
    content: str | list[_Block]


class _Metadata(_Strict):
    user_id: str | None = Field(default=None, max_length=256)  # for the caller's records; dinet keeps none


class MessagesRequest(_Strict):
    model: str = Field(min_length=1, max_length=256)
    max_tokens: int = Field(ge=1)
    messages: list[_Message] = Field(min_length=1)
    system: str | list[_Block] | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop_sequences: list[str] | None = None
    stream: bool = False
    metadata: _Metadata | None = None
    cache_control: object = None  # a prompt-caching hint: it never changes the answer
    dinet: oa.DinetOptions = oa.DinetOptions()  # dinet's own, as in the OpenAI API


def parse_request(body: object) -> MessagesRequest:
    """A validated request, or RequestError naming the first field refused."""
    oa.refuse_unsupported(body, _REFUSED)
    if isinstance(body, dict):  # what is left of the refused fields asks for nothing
        body = {k: v for k, v in body.items() if k not in _REFUSED}
    return oa.validated(MessagesRequest, body)


def generation_params(request: MessagesRequest) -> GenerationParams:
    """What to ask the network. Anthropic's defaults: temperature 1, top_p 1; it has no seed."""
    last = len(request.messages) - 1
    if request.messages[last].role == "assistant":
        # Anthropic continues a final assistant message; dinet's chat template closes it.
        raise RequestError(
            f"messages.{last}: dinet cannot continue a prefilled assistant turn: end with a user message",
            f"messages.{last}",
        )
    messages: list[dict[str, str]] = []
    if request.system:
        messages.append({"role": "system", "content": _text(request.system, "system")})
    for i, message in enumerate(request.messages):
        messages.append({"role": message.role, "content": _text(message.content, f"messages.{i}.content")})
    fields: dict[str, Any] = {
        "messages": tuple(messages),
        "max_tokens": request.max_tokens,
        "temperature": 1.0 if request.temperature is None else float(request.temperature),
        "top_p": 1.0 if request.top_p is None else float(request.top_p),
        "seed": oa.random_seed(),
        "stop": tuple(request.stop_sequences or ()),
    }
    return oa.checked_params(fields, {"stop": "stop_sequences"})


def _text(content: str | list[_Block], where: str) -> str:
    if isinstance(content, str):
        return content
    return "".join(block.text_at(f"{where}.{i}") for i, block in enumerate(content))


def new_id() -> str:
    return "msg_" + uuid.uuid4().hex


def stop_reason(answer: Answer) -> str:
    """`max_tokens` or `end_turn`. A stop sequence also ends as dinet's "stop", and the
    answer cannot say whether one did, so it is reported as `end_turn` as well."""
    return "max_tokens" if answer.finish_reason == "length" else "end_turn"


def usage(answer: Answer) -> dict[str, int]:
    return {"input_tokens": answer.usage.prompt_tokens, "output_tokens": answer.usage.completion_tokens}


def message(message_id: str, answer: Answer, extra: dict[str, object]) -> dict[str, object]:
    """The whole answer as a `message` object, with dinet's own `dinet` field."""
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": answer.text}],
        "model": answer.model_id,
        "stop_reason": stop_reason(answer),
        "stop_sequence": None,
        "usage": usage(answer),
        "dinet": {**oa.dinet_extra(answer), **extra},
    }


class MessageStream:
    """A streamed message as Anthropic's events: message_start; one text block (its start,
    a ping, a delta per piece of text, its stop); message_delta with the stop reason and
    usage; message_stop. A failure after the start is an `error` event."""

    def __init__(self, message_id: str, model: str) -> None:
        self.message_id, self.model = message_id, model

    def opening(self) -> bytes:
        start: dict[str, object] = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": self.model,
            "stop_reason": None,
            "stop_sequence": None,
            # The prompt's length is known only at the end: message_delta carries it.
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return (
            oa.sse("message_start", {"type": "message_start", "message": start})
            + oa.sse(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            )
            + oa.sse("ping", {"type": "ping"})
        )

    def text(self, text: str) -> bytes:
        delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}
        return oa.sse("content_block_delta", delta)

    def closing(self, answer: Answer, extra: dict[str, object]) -> bytes:
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(answer), "stop_sequence": None},
            "usage": usage(answer),
            "dinet": {**oa.dinet_extra(answer), **extra},
        }
        return (
            oa.sse("content_block_stop", {"type": "content_block_stop", "index": 0})
            + oa.sse("message_delta", delta)
            + oa.sse("message_stop", {"type": "message_stop"})
        )

    def failure(self, error: ApiError) -> bytes:
        return oa.sse("error", error.anthropic_body())
