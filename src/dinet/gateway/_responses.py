"""OpenAI's Responses API (`POST /v1/responses`): its request and response shapes, and
their translation.

Parsed leniently like the chat API (unknown fields are ignored: OpenAI's SDKs add new
ones often), but a field that asks for what dinet cannot do (tools, stored responses
and conversations, reasoning, images and files) is refused with a 400 naming it.
`text.format` json_object and json_schema are structured outputs, as on the chat API.
dinet keeps no responses: every request carries its whole conversation.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dinet.client.ask import Answer
from dinet.client.structured import json_object_grammar, json_schema_grammar
from dinet.errors import RequestError
from dinet.gateway import _openai as oa
from dinet.gateway._errors import ApiError
from dinet.gateway._tools import WHERE_TOOLS
from dinet.wire.messages import GenerationParams

_STATELESS = "dinet keeps no responses or conversations: send the whole conversation in input"

# Fields dinet cannot honour yet: the values that ask for nothing, and why any other is refused.
_REFUSED: dict[str, tuple[tuple[object, ...], str]] = {
    "tools": ((None, []), WHERE_TOOLS),
    "tool_choice": ((None, "none", "auto"), WHERE_TOOLS),
    "previous_response_id": ((None,), _STATELESS),
    "conversation": ((None,), _STATELESS),
    "store": ((None, False), "dinet keeps no responses: leave store out or set it to false"),
    "background": ((None, False), "background responses are not supported by dinet"),
    "reasoning": ((None,), "reasoning options are not supported by dinet"),
    "include": ((None, []), "extra output (include) is not supported by dinet"),
    "top_logprobs": ((None, 0), "logprobs are not supported by dinet"),
    "prompt": ((None,), "stored prompt templates are not supported by dinet"),
    "truncation": ((None, "disabled"), "dinet does not truncate a conversation: send one that fits"),
}
_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
_FORMATS = ("text", "json_object", "json_schema")
_TEXT_PARTS = ("input_text", "output_text")  # a user's text, or an earlier answer's sent back


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Part(_Lenient):
    type: str
    text: str | None = None


class _Item(_Lenient):
    """An input item as sent: any type is read, so that a refusal can name it."""

    type: str = "message"
    role: str | None = None
    content: str | list[_Part] | None = None

    def to_wire(self, where: str) -> dict[str, str]:
        if self.type != "message":
            raise RequestError(f"{where}: {self.type!r} items are not supported by dinet", where)
        role = _ROLES.get(self.role or "")
        if role is None:
            raise RequestError(f"{where}.role: give user, assistant, system or developer", f"{where}.role")
        if self.content is None or isinstance(self.content, str):
            return {"role": role, "content": self.content or ""}
        texts = []
        for i, part in enumerate(self.content):
            if part.type not in _TEXT_PARTS or part.text is None:
                at = f"{where}.content.{i}"
                raise RequestError(
                    f"{at}: {part.type!r} content is not supported (dinet's models read text only)", at
                )
            texts.append(part.text)
        return {"role": role, "content": "".join(texts)}


class _Format(_Lenient):
    type: str
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None  # the grammar keeps to the schema either way

    def grammar(self) -> str | None:
        """The grammar of a JSON format (structured outputs); None for plain text."""
        if self.type == "json_object":
            return json_object_grammar()
        if self.type == "json_schema":
            if self.schema_ is None:
                raise RequestError("text.format: a json_schema format needs its schema", "text.format")
            return json_schema_grammar(self.schema_, "text.format")
        return None


class _TextOptions(_Lenient):
    format: _Format | None = None
    verbosity: str | None = None


class ResponsesRequest(_Lenient):
    model: str = Field(min_length=1, max_length=256)
    input: str | list[_Item] = Field(min_length=1)
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stream: bool = False
    metadata: dict[str, str] | None = None
    text: _TextOptions | None = None
    dinet: oa.DinetOptions = oa.DinetOptions()  # dinet's own, as in the chat API


def parse_request(body: object) -> ResponsesRequest:
    """A validated request, or RequestError naming the first field refused."""
    oa.refuse_unsupported(body, _REFUSED)
    request = oa.validated(ResponsesRequest, body)
    text = request.text
    if text is not None and text.format is not None and text.format.type not in _FORMATS:
        raise RequestError(f"text.format: the type is one of {', '.join(_FORMATS)}", "text.format")
    if text is not None and text.verbosity not in (None, "medium"):
        raise RequestError("text.verbosity: not supported by dinet", "text.verbosity")
    return request


def generation_params(request: ResponsesRequest, default_max_tokens: int) -> GenerationParams:
    """What to ask the network. OpenAI's defaults: temperature 1, top_p 1; there is no seed."""
    messages = [{"role": "system", "content": request.instructions}] if request.instructions else []
    if isinstance(request.input, str):
        messages.append({"role": "user", "content": request.input})
    else:
        messages.extend(item.to_wire(f"input.{i}") for i, item in enumerate(request.input))
    fields: dict[str, Any] = {
        "messages": tuple(messages),
        "max_tokens": request.max_output_tokens or default_max_tokens,
        "temperature": 1.0 if request.temperature is None else float(request.temperature),
        "top_p": 1.0 if request.top_p is None else float(request.top_p),
        "seed": oa.random_seed(),
    }
    if request.text is not None and request.text.format is not None:
        fields["grammar"] = request.text.format.grammar()
    names = {"max_tokens": "max_output_tokens", "messages": "input", "grammar": "text.format"}
    return oa.checked_params(fields, names)


@dataclass(frozen=True)
class Echo:
    """What every response object of one request repeats: its ids and the request's settings."""

    response_id: str
    item_id: str
    created_at: int
    model: str
    instructions: str | None
    max_output_tokens: int
    temperature: float
    top_p: float
    metadata: dict[str, str]

    @classmethod
    def of(cls, request: ResponsesRequest, params: GenerationParams) -> Echo:
        return cls(
            response_id="resp_" + uuid.uuid4().hex,
            item_id="msg_" + uuid.uuid4().hex,
            created_at=int(time.time()),
            model=request.model,
            instructions=request.instructions,
            max_output_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            metadata=request.metadata or {},
        )


def response_body(echo: Echo, answer: Answer, extra: dict[str, object]) -> dict[str, object]:
    """The finished `response`: `completed`, or `incomplete` when it ran out of tokens."""
    status = _status(answer)
    u = answer.usage
    body = _response(
        echo,
        status,
        answer.model_id,
        [_answer_item(echo, answer)],
        usage={
            "input_tokens": u.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": u.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": u.prompt_tokens + u.completion_tokens,
        },
    )
    if status == "incomplete":
        body["incomplete_details"] = {"reason": "max_output_tokens"}
    body["completed_at"] = int(time.time())
    body["dinet"] = {**oa.dinet_extra(answer), **extra}
    return body


def _status(answer: Answer) -> str:
    return "completed" if answer.finish_reason == "stop" else "incomplete"


def _answer_item(echo: Echo, answer: Answer) -> dict[str, object]:
    return _message_item(echo.item_id, _status(answer), [_text_part(answer.text)])


def _response(
    echo: Echo,
    status: str,
    model: str,
    output: list[dict[str, object]],
    usage: dict[str, object] | None = None,
) -> dict[str, object]:
    return {
        "id": echo.response_id,
        "object": "response",
        "created_at": echo.created_at,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": echo.instructions,
        "max_output_tokens": echo.max_output_tokens,
        "model": model,
        "output": output,
        "parallel_tool_calls": False,
        "previous_response_id": None,
        "reasoning": None,
        "store": False,
        "temperature": echo.temperature,
        "text": {"format": {"type": "text"}},
        "tool_choice": "none",
        "tools": [],
        "top_p": echo.top_p,
        "truncation": "disabled",
        "usage": usage,
        "metadata": echo.metadata,
    }


def _message_item(item_id: str, status: str, content: list[dict[str, object]]) -> dict[str, object]:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def _text_part(text: str) -> dict[str, object]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


class ResponseStream:
    """A streamed response as the Responses API's events, numbered from 0: the response
    created and in progress; one message item and its one text part added; a delta per
    piece of text; the text, part and item done; then `response.completed` (or
    `response.incomplete` when it ran out of tokens). A failure after the start is an
    `error` event."""

    def __init__(self, echo: Echo) -> None:
        self.echo = echo
        self._sequence = 0

    def _event(self, kind: str, **fields: object) -> bytes:
        payload = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return oa.sse(kind, payload)

    def _in_item(self, kind: str, **fields: object) -> bytes:
        return self._event(kind, item_id=self.echo.item_id, output_index=0, content_index=0, **fields)

    def opening(self) -> bytes:
        started = _response(self.echo, "in_progress", self.echo.model, [])
        return (
            self._event("response.created", response=started)
            + self._event("response.in_progress", response=started)
            + self._event(
                "response.output_item.added",
                output_index=0,
                item=_message_item(self.echo.item_id, "in_progress", []),
            )
            + self._in_item("response.content_part.added", part=_text_part(""))
        )

    def text(self, text: str) -> bytes:
        return self._in_item("response.output_text.delta", delta=text, logprobs=[])

    def closing(self, answer: Answer, extra: dict[str, object]) -> bytes:
        ending = "response.completed" if _status(answer) == "completed" else "response.incomplete"
        item = _answer_item(self.echo, answer)
        return (
            self._in_item("response.output_text.done", text=answer.text, logprobs=[])
            + self._in_item("response.content_part.done", part=_text_part(answer.text))
            + self._event("response.output_item.done", output_index=0, item=item)
            + self._event(ending, response=response_body(self.echo, answer, extra))
        )

    def failure(self, error: ApiError) -> bytes:
        return self._event("error", code=error.code, message=error.message, param=error.param)
