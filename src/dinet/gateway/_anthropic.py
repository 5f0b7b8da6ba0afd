"""Anthropic's Messages API (`POST /v1/messages`): its request and response shapes, and
their translation.

Requests are parsed strictly, as Anthropic's own API parses them: an unknown field is
refused, and so is one dinet cannot honour yet (thinking, top_k, server tools, images and
documents in content, a prefilled assistant turn), each with a 400 that names it.

`tools` are offered as on the chat API (`_tools.offer`), for a model whose chat template
declares tool support: `tool_choice` "auto" lets the model choose, "any" and "tool" force
one call by grammar, "none" leaves the tools out of the prompt. An assistant's `tool_use`
blocks become its tool calls; a user's `tool_result` blocks, tool messages answering them
(an error result's text marked "Error: "). The answer's calls come back as `tool_use`
blocks after its text, with `stop_reason: "tool_use"`. `disable_parallel_tool_use` is
taken and changes nothing, as OpenAI's `parallel_tool_calls`: a forced call is one call.

dinet's answer ends "stop" or "length" and does not say which stop string, if any,
ended it (the node strips the string), so `stop_reason` is `end_turn` or `max_tokens`,
never `stop_sequence`: see `stop_reason`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dinet.client.ask import Answer
from dinet.errors import RequestError
from dinet.gateway import _openai as oa
from dinet.gateway._errors import ApiError
from dinet.gateway._tools import Call, CallSplitter, offer, split_calls, wire_call, wire_tool
from dinet.wire.messages import GenerationParams, Tool

# Fields dinet cannot honour yet: the values that ask for nothing, and why any other is refused.
_REFUSED: dict[str, tuple[tuple[object, ...], str]] = {
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


class _ToolUse(_Strict):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]
    cache_control: object = None


class _ToolResult(_Strict):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[_Block] = ""
    is_error: bool = False
    cache_control: object = None


class _Message(_Strict):
    role: Literal["user", "assistant"]
    content: str | list[_Block]


class _Tool(_Strict):
    name: str
    description: str = ""
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None  # Anthropic's server tools (web search...) are not dinet's
    cache_control: object = None


class _ToolChoice(_Strict):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None  # the function "tool" forces
    disable_parallel_tool_use: bool | None = None  # see above

    def mode(self) -> tuple[Literal["auto", "none", "required"], str | None]:
        """As `_tools.offer` takes it."""
        if self.type == "tool":
            if self.name is None:
                raise RequestError(
                    "tool_choice.name: a tool choice of type tool names it", "tool_choice.name"
                )
            return "required", self.name
        if self.type == "any":
            return "required", None
        return self.type, None


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
    tools: list[_Tool] | None = None
    tool_choice: _ToolChoice | None = None
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
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": _text(request.system, "system")})
    for i, message in enumerate(request.messages):
        messages.extend(_turns(message, f"messages.{i}.content"))
    choice, name = (request.tool_choice or _ToolChoice(type="auto")).mode()
    offered = offer(_tools(request), choice, name)
    fields: dict[str, Any] = {
        "messages": tuple(messages),
        "max_tokens": request.max_tokens,
        "temperature": 1.0 if request.temperature is None else float(request.temperature),
        "top_p": 1.0 if request.top_p is None else float(request.top_p),
        "seed": oa.random_seed(),
        "stop": tuple(request.stop_sequences or ()),
        "tools": offered.tools,
        "grammar": offered.grammar,
    }
    return oa.checked_params(fields, {"stop": "stop_sequences", "grammar": "tool_choice"})


def _tools(request: MessagesRequest) -> list[Tool]:
    return [
        wire_tool(t.name, t.description, t.input_schema, f"tools.{i}")
        for i, t in enumerate(request.tools or ())
    ]


def _turns(message: _Message, where: str) -> list[dict[str, Any]]:
    """A message as the chat template's turns: an assistant's text with its `tool_use`
    blocks as calls; a user's `tool_result` blocks as tool messages, then its text."""
    if isinstance(message.content, str):
        return [{"role": message.role, "content": message.content}]
    text: list[str] = []
    calls = []
    results: list[dict[str, Any]] = []
    for i, block in enumerate(message.content):
        at = f"{where}.{i}"
        if block.type == "tool_use" and message.role == "assistant":
            use = _block(_ToolUse, block, at)
            calls.append(wire_call(use.id, use.name, use.input, at))
        elif block.type == "tool_result" and message.role == "user":
            result = _block(_ToolResult, block, at)
            content = _text(result.content, f"{at}.content")
            content = "Error: " + content if result.is_error else content
            results.append({"role": "tool", "tool_call_id": result.tool_use_id, "content": content})
        elif block.type in ("tool_use", "tool_result"):
            whose = "an assistant's" if block.type == "tool_use" else "a user's"
            raise RequestError(f"{at}: a {block.type} block goes in {whose} message", at)
        else:
            text.append(block.text_at(at))
    if message.role == "assistant":
        return [{"role": "assistant", "content": "".join(text), "tool_calls": tuple(calls)}]
    return results + ([{"role": "user", "content": "".join(text)}] if text or not results else [])


def _block(model: type[oa.M], block: _Block, where: str) -> oa.M:
    """A tool block read strictly, or RequestError naming where it is."""
    try:
        return model.model_validate(block.model_dump(exclude_unset=True))
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join([where, *(str(p) for p in first["loc"])])
        raise RequestError(f"invalid value for {field}: {first['msg']}", field) from None


def _text(content: str | list[_Block], where: str) -> str:
    if isinstance(content, str):
        return content
    return "".join(block.text_at(f"{where}.{i}") for i, block in enumerate(content))


def new_id() -> str:
    return "msg_" + uuid.uuid4().hex


def stop_reason(answer: Answer, called: bool = False) -> str:
    """`max_tokens`, `tool_use` (the answer ended by itself after a call) or `end_turn`. A
    stop sequence also ends as dinet's "stop", and the answer cannot say whether one did,
    so it is reported as `end_turn` as well."""
    if answer.finish_reason == "length":
        return "max_tokens"
    return "tool_use" if called else "end_turn"


def tool_use(call: Call) -> dict[str, object]:
    """A call as Anthropic's `tool_use` block."""
    return {
        "type": "tool_use",
        "id": "toolu_" + uuid.uuid4().hex[:24],
        "name": call.name,
        "input": call.input(),
    }


def usage(answer: Answer) -> dict[str, int]:
    return {"input_tokens": answer.usage.prompt_tokens, "output_tokens": answer.usage.completion_tokens}


def message(
    message_id: str, answer: Answer, extra: dict[str, object], tools: Collection[str] = ()
) -> dict[str, object]:
    """The whole answer as a `message` object, with dinet's own `dinet` field. With the
    names of `tools` offered, its calls are `tool_use` blocks after its text (if any)."""
    text, calls = split_calls(answer.text, tools) if tools else (answer.text, [])
    content: list[dict[str, object]] = [{"type": "text", "text": text}] if text or not calls else []
    content += [tool_use(call) for call in calls]
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "content": content,
        "model": answer.model_id,
        "stop_reason": stop_reason(answer, bool(calls)),
        "stop_sequence": None,
        "usage": usage(answer),
        "dinet": {**oa.dinet_extra(answer), **extra},
    }


class MessageStream:
    """A streamed message as Anthropic's events: message_start; content blocks, each its
    start, its deltas and its stop; message_delta with the stop reason and usage;
    message_stop. A failure after the start is an `error` event.

    Without tools there is one text block, opened at once (with a ping). With the names of
    `tools` offered, calls are read out of the text as it streams: a text block opens at
    the first text shown, and each call is a `tool_use` block of its own, its input sent
    whole in one `input_json_delta`."""

    def __init__(self, message_id: str, model: str, tools: Collection[str] = ()) -> None:
        self.message_id, self.model = message_id, model
        self.splitter = CallSplitter(tools) if tools else None
        self.blocks = 0  # opened so far
        self.open_text = False

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
        opened = oa.sse("message_start", {"type": "message_start", "message": start})
        if self.splitter is None:
            opened += self._start_text()
        return opened + oa.sse("ping", {"type": "ping"})

    def text(self, text: str) -> bytes:
        if self.splitter is None:
            return self._text_delta(text)
        shown, calls = self.splitter.feed(text)
        return self._blocks(shown, calls)

    def closing(self, answer: Answer, extra: dict[str, object]) -> bytes:
        called = False
        events = b""
        if self.splitter is not None:
            events = self._blocks(self.splitter.finish(), [])
            called = self.splitter.calls > 0
            if self.blocks == 0:  # an empty answer still has its (empty) text block
                events += self._start_text()
        events += self._stop_text()
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(answer, called), "stop_sequence": None},
            "usage": usage(answer),
            "dinet": {**oa.dinet_extra(answer), **extra},
        }
        return events + oa.sse("message_delta", delta) + oa.sse("message_stop", {"type": "message_stop"})

    def failure(self, error: ApiError) -> bytes:
        return oa.sse("error", error.anthropic_body())

    def _blocks(self, text: str, calls: list[Call]) -> bytes:
        events = b""
        if text:
            if not self.open_text:
                events += self._start_text()
            events += self._text_delta(text)
        for call in calls:
            events += self._stop_text()
            block = {**tool_use(call), "input": {}}
            index = self.blocks
            self.blocks += 1
            partial = json.dumps(call.input(), ensure_ascii=False)
            delta = {"type": "input_json_delta", "partial_json": partial}
            events += (
                oa.sse(
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": block},
                )
                + oa.sse(
                    "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
                )
                + oa.sse("content_block_stop", {"type": "content_block_stop", "index": index})
            )
        return events

    def _start_text(self) -> bytes:
        self.open_text = True
        self.blocks += 1
        block = {"type": "text", "text": ""}
        start = {"type": "content_block_start", "index": self.blocks - 1, "content_block": block}
        return oa.sse("content_block_start", start)

    def _text_delta(self, text: str) -> bytes:
        delta = {"type": "text_delta", "text": text}
        return oa.sse(
            "content_block_delta", {"type": "content_block_delta", "index": self.blocks - 1, "delta": delta}
        )

    def _stop_text(self) -> bytes:
        if not self.open_text:
            return b""
        self.open_text = False
        return oa.sse("content_block_stop", {"type": "content_block_stop", "index": self.blocks - 1})
