"""OpenAI's Responses API (`POST /v1/responses`): its request and response shapes, and
their translation.

Parsed leniently like the chat API (unknown fields are ignored: OpenAI's SDKs add new
ones often), but a field that asks for what dinet cannot do (hosted tools, stored
responses and conversations, reasoning, images and files) is refused with a 400 naming
it. `text.format` json_object and json_schema are structured outputs, as on the chat API.
dinet keeps no responses: every request carries its whole conversation.

Function `tools` and `tool_choice` are offered as on the chat API (`_tools.offer`), for a
model whose chat template declares tool support. `function_call` input items are an
assistant's calls, `function_call_output` items their results; the answer's calls are
`function_call` output items after its message (if it has text), streamed each as one
item added, its arguments in one delta, done.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dinet.client.ask import Answer
from dinet.client.structured import json_object_grammar, json_schema_grammar
from dinet.errors import RequestError
from dinet.gateway import _openai as oa
from dinet.gateway._errors import ApiError
from dinet.gateway._tools import Call, CallSplitter, offer, split_calls, wire_tool
from dinet.wire.messages import GenerationParams, Tool

_STATELESS = "dinet keeps no responses or conversations: send the whole conversation in input"

# Fields dinet cannot honour yet: the values that ask for nothing, and why any other is refused.
_REFUSED: dict[str, tuple[tuple[object, ...], str]] = {
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
    # A function_call item's (the call), or a function_call_output item's (its result).
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | list[_Part] | None = None

    def add_to(self, messages: list[dict[str, Any]], where: str) -> None:
        """The item as the chat template's turns: a call joins the assistant turn before it
        (or starts one), a call's output is a tool message."""
        if self.type == "function_call":
            if self.call_id is None or self.name is None or self.arguments is None:
                raise RequestError(f"{where}: a function_call gives call_id, name and arguments", where)
            call = {"id": self.call_id, "name": self.name, "arguments": self.arguments}
            if messages and messages[-1]["role"] == "assistant":
                messages[-1]["tool_calls"] = (*messages[-1].get("tool_calls", ()), call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": (call,)})
        elif self.type == "function_call_output":
            if self.call_id is None:
                raise RequestError(
                    f"{where}.call_id: a function_call_output names its call", f"{where}.call_id"
                )
            output = _texts(self.output, f"{where}.output")
            messages.append({"role": "tool", "tool_call_id": self.call_id, "content": output})
        else:
            messages.append(self.to_wire(where))

    def to_wire(self, where: str) -> dict[str, str]:
        if self.type != "message":
            raise RequestError(f"{where}: {self.type!r} items are not supported by dinet", where)
        role = _ROLES.get(self.role or "")
        if role is None:
            raise RequestError(f"{where}.role: give user, assistant, system or developer", f"{where}.role")
        return {"role": role, "content": _texts(self.content, f"{where}.content")}


def _texts(content: str | list[_Part] | None, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for i, part in enumerate(content):
        if part.type not in _TEXT_PARTS or part.text is None:
            at = f"{where}.{i}"
            raise RequestError(
                f"{at}: {part.type!r} content is not supported (dinet's models read text only)", at
            )
        texts.append(part.text)
    return "".join(texts)


class _FunctionTool(_Lenient):
    type: str
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None  # a forced call keeps to the schema either way

    def to_wire(self, where: str) -> Tool:
        if self.type != "function":
            raise RequestError(
                f"{where}: {self.type!r} tools are not supported by dinet: give function tools", where
            )
        if self.name is None:
            raise RequestError(f"{where}.name: a function tool is named", f"{where}.name")
        return wire_tool(self.name, self.description or "", self.parameters or {}, where)

    def echo(self) -> dict[str, object]:
        """As the response repeats it."""
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
            "strict": self.strict,
        }


class _NamedChoice(_Lenient):
    type: str
    name: str | None = None


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
    tools: list[_FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | _NamedChoice | None = None
    parallel_tool_calls: bool | None = None  # changes nothing, as on the chat API
    dinet: oa.DinetOptions = oa.DinetOptions()  # dinet's own, as in the chat API

    def choice(self) -> tuple[Literal["none", "auto", "required"], str | None]:
        """`tool_choice` as `_tools.offer` takes it."""
        choice = self.tool_choice
        if not isinstance(choice, _NamedChoice):
            return choice or "auto", None
        if choice.type != "function" or choice.name is None:
            raise RequestError("tool_choice: give none, auto, required or a function by name", "tool_choice")
        return "required", choice.name


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
    messages: list[dict[str, Any]] = []
    if request.instructions:
        messages.append({"role": "system", "content": request.instructions})
    if isinstance(request.input, str):
        messages.append({"role": "user", "content": request.input})
    else:
        for i, item in enumerate(request.input):
            item.add_to(messages, f"input.{i}")
    tools = [t.to_wire(f"tools.{i}") for i, t in enumerate(request.tools or ())]
    offered = offer(tools, *request.choice())
    fields: dict[str, Any] = {
        "messages": tuple(messages),
        "max_tokens": request.max_output_tokens or default_max_tokens,
        "temperature": 1.0 if request.temperature is None else float(request.temperature),
        "top_p": 1.0 if request.top_p is None else float(request.top_p),
        "seed": oa.random_seed(),
    }
    if request.text is not None and request.text.format is not None:
        fields["grammar"] = request.text.format.grammar()
    if offered.tools:
        fields["tools"] = offered.tools
    if offered.grammar is not None:
        if fields.get("grammar") is not None:
            raise RequestError("a forced tool call and a text.format do not go together", "tool_choice")
        fields["grammar"] = offered.grammar
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
    tools: list[dict[str, object]] = field(default_factory=list)
    tool_choice: object = "auto"
    names: frozenset[str] = frozenset()  # of the functions offered, whose calls are read back

    @classmethod
    def of(cls, request: ResponsesRequest, params: GenerationParams) -> Echo:
        choice = request.tool_choice
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
            tools=[t.echo() for t in request.tools or ()],
            tool_choice=choice.model_dump() if isinstance(choice, _NamedChoice) else choice or "auto",
            names=frozenset(t.name for t in params.tools),
        )


def response_body(
    echo: Echo, answer: Answer, extra: dict[str, object], output: list[dict[str, object]] | None = None
) -> dict[str, object]:
    """The finished `response`: `completed`, or `incomplete` when it ran out of tokens.
    `output`: its items as streamed; by default, read from the answer."""
    status = _status(answer)
    u = answer.usage
    body = _response(
        echo,
        status,
        answer.model_id,
        _output(echo, answer) if output is None else output,
        usage={
            "input_tokens": u.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
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


def _output(echo: Echo, answer: Answer) -> list[dict[str, object]]:
    """The answer's items: its message, then a function_call item per call (the message
    left out when only calls were written)."""
    if not echo.names:
        return [_answer_item(echo, answer)]
    text, calls = split_calls(answer.text, echo.names)
    message = (
        [_message_item(echo.item_id, _status(answer), [_text_part(text or "")])] if text or not calls else []
    )
    return message + [_call_item(call) for call in calls]


def _call_item(call: Call, status: str = "completed") -> dict[str, object]:
    return {
        "type": "function_call",
        "id": "fc_" + uuid.uuid4().hex,
        "call_id": "call_" + uuid.uuid4().hex[:24],
        "name": call.name,
        "arguments": call.arguments,
        "status": status,
    }


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
        "tool_choice": echo.tool_choice,
        "tools": echo.tools,
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
    `error` event.

    With functions offered, calls are read out of the text as it streams: a message item
    opens at the first text shown and closes at a call, and each call is a function_call
    item (added, its arguments in one delta, done)."""

    def __init__(self, echo: Echo) -> None:
        self.echo = echo
        self._sequence = 0
        self.splitter = CallSplitter(echo.names) if echo.names else None
        self.items: list[dict[str, object]] = []  # done, in order
        self._text: str | None = None  # the open message item's text so far; None: none open
        self._item_id = echo.item_id

    def _event(self, kind: str, **fields: object) -> bytes:
        payload = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return oa.sse(kind, payload)

    def _in_item(self, kind: str, **fields: object) -> bytes:
        return self._event(
            kind, item_id=self._item_id, output_index=len(self.items), content_index=0, **fields
        )

    def opening(self) -> bytes:
        started = _response(self.echo, "in_progress", self.echo.model, [])
        events = self._event("response.created", response=started)
        events += self._event("response.in_progress", response=started)
        return events + (self._open_message() if self.splitter is None else b"")

    def text(self, text: str) -> bytes:
        if self.splitter is None:
            return self._in_item("response.output_text.delta", delta=text, logprobs=[])
        return self._pieces(*self.splitter.feed(text))

    def closing(self, answer: Answer, extra: dict[str, object]) -> bytes:
        ending = "response.completed" if _status(answer) == "completed" else "response.incomplete"
        if self.splitter is None:
            events = self._close_message(_status(answer), answer.text)
            return events + self._event(ending, response=response_body(self.echo, answer, extra))
        events = self._pieces(self.splitter.finish(), [])
        if not self.items and self._text is None:  # an empty answer still has its message
            events += self._open_message()
        events += self._close_message(_status(answer), self._text)
        return events + self._event(ending, response=response_body(self.echo, answer, extra, self.items))

    def failure(self, error: ApiError) -> bytes:
        return self._event("error", code=error.code, message=error.message, param=error.param)

    def _open_message(self) -> bytes:
        self._text = ""
        item = _message_item(self._item_id, "in_progress", [])
        added = self._event("response.output_item.added", output_index=len(self.items), item=item)
        return added + self._in_item("response.content_part.added", part=_text_part(""))

    def _close_message(self, status: str, text: str | None) -> bytes:
        if self._text is None or text is None:
            return b""
        item = _message_item(self._item_id, status, [_text_part(text)])
        events = (
            self._in_item("response.output_text.done", text=text, logprobs=[])
            + self._in_item("response.content_part.done", part=_text_part(text))
            + self._event("response.output_item.done", output_index=len(self.items), item=item)
        )
        self.items.append(item)
        self._text = None
        self._item_id = "msg_" + uuid.uuid4().hex  # text after a call is another message
        return events

    def _pieces(self, text: str, calls: list[Call]) -> bytes:
        events = b""
        if text:
            if self._text is None:
                events += self._open_message()
            self._text = (self._text or "") + text
            events += self._in_item("response.output_text.delta", delta=text, logprobs=[])
        for call in calls:
            events += self._close_message("completed", self._text)
            item = _call_item(call)
            index, item_id = len(self.items), item["id"]
            events += self._event(
                "response.output_item.added",
                output_index=index,
                item={**item, "arguments": "", "status": "in_progress"},
            )
            events += self._event(
                "response.function_call_arguments.delta",
                item_id=item_id,
                output_index=index,
                delta=call.arguments,
            )
            events += self._event(
                "response.function_call_arguments.done",
                item_id=item_id,
                output_index=index,
                name=call.name,
                arguments=call.arguments,
            )
            events += self._event("response.output_item.done", output_index=index, item=item)
            self.items.append(item)
        return events
