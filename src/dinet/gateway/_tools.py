"""Tool calls read back from an answer's text, whole or as it streams.

A model whose chat template declares tool support (`dinet.engine.llama._llama_cpp.
template_tools`) calls a function by writing `<tool_call>{"name": ..., "arguments":
{...}}</tool_call>`. A block is a call only when it is well formed: JSON with a `name`
among the functions offered and `arguments` that are an object (or the text of one).
Anything else, an unclosed block included, stays in the answer's text as the model wrote
it: nothing is guessed. Calls are numbered in order; each gets a fresh id.

Every API the gateway speaks offers tools the same way (`offer`): the same wire tools,
the same grammar for a forced call; each then draws the calls in its own shape.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from dinet.client.structured import tool_call_grammar
from dinet.errors import RequestError
from dinet.wire.messages import Tool, ToolCall

OPEN = "<tool_call>"
CLOSE = "</tool_call>"
_BLOCK = re.compile(re.escape(OPEN) + r"(.*?)" + re.escape(CLOSE), re.DOTALL)


@dataclass(frozen=True)
class Call:
    name: str
    arguments: str  # the text of a JSON object

    def openai(self, index: int | None = None) -> dict[str, object]:
        """OpenAI's `tool_calls` entry (with `index`: a streamed delta's)."""
        entry: dict[str, object] = {
            "id": "call_" + uuid.uuid4().hex[:24],
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }
        return entry if index is None else {"index": index, **entry}

    def input(self) -> dict[str, Any]:
        """The arguments as an object, as Anthropic's and Ollama's APIs give them."""
        arguments: dict[str, Any] = json.loads(self.arguments)
        return arguments


@dataclass(frozen=True)
class Offer:
    """The functions to render for the model, and the grammar a forced call keeps to
    (None: the model chooses whether to call)."""

    tools: tuple[Tool, ...]
    grammar: str | None


def offer(
    tools: Sequence[Tool], choice: Literal["auto", "none", "required"], name: str | None = None
) -> Offer:
    """What a request's tools and its choice ask for: "auto" lets the model choose; "required"
    forces one call, of the function `name` if given, so the grammar travels and verification
    keeps to it; "none" leaves the tools out of the prompt. RequestError naming `tool_choice`
    or `tools` (each API's name for them) if they do not go together."""
    if choice == "none" or not tools:
        if choice == "required":
            raise RequestError("tool_choice asks for a call, but no tools are given", "tool_choice")
        return Offer((), None)
    if len({t.name for t in tools}) != len(tools):
        raise RequestError("two tools have the same name", "tools")
    if choice == "auto":
        return Offer(tuple(tools), None)
    forced = [t for t in tools if name is None or t.name == name]
    if not forced:
        raise RequestError("tool_choice names a function that is not among the tools", "tool_choice")
    return Offer(tuple(tools), tool_call_grammar(forced))


def wire_tool(name: str, description: str, parameters: Mapping[str, Any], where: str) -> Tool:
    """A function offered, or RequestError naming `where` in the request."""
    try:
        return Tool(name=name, description=description, parameters=json.dumps(parameters))
    except ValidationError as exc:
        raise RequestError(f"invalid value for {where}: {exc.errors()[0]['msg']}", where) from None


def wire_call(call_id: str, name: str, arguments: Mapping[str, Any], where: str) -> ToolCall:
    """A call an assistant made (its arguments an object), or RequestError naming `where`."""
    try:
        return ToolCall(id=call_id, name=name, arguments=json.dumps(arguments, ensure_ascii=False))
    except ValidationError as exc:
        raise RequestError(f"invalid value for {where}: {exc.errors()[0]['msg']}", where) from None


def read_call(inside: str, names: Collection[str]) -> Call | None:
    """The call a block's inside holds, or None if it is not a well-formed call of one of `names`."""
    try:
        body = json.loads(inside)
    except ValueError:
        return None
    if not isinstance(body, dict) or body.get("name") not in names:
        return None
    arguments = body.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return Call(body["name"], json.dumps(arguments, ensure_ascii=False))


def split_calls(text: str, names: Collection[str]) -> tuple[str | None, list[Call]]:
    """The answer's text outside its calls (None if only whitespace is left), and its calls."""
    calls: list[Call] = []
    kept: list[str] = []
    at = 0
    for match in _BLOCK.finditer(text):
        call = read_call(match.group(1), names)
        if call is None:
            continue
        kept.append(text[at : match.start()])
        calls.append(call)
        at = match.end()
    kept.append(text[at:])
    content = "".join(kept)
    if calls:
        content = content.strip()
    return (content or None), calls


class CallSplitter:
    """`split_calls` as the text streams: `feed` gives the text that can be shown now and
    the calls whose blocks just closed. Text that may begin a block is held until it is seen
    to be one or not; so is whitespace, shown only once more text follows it (it goes if a
    call does, as `split_calls` strips the text around calls)."""

    def __init__(self, names: Collection[str]) -> None:
        self._names = names
        self._held = ""  # may begin a block, or is an open one
        self._space = ""  # whitespace not shown yet
        self._shown = False
        self.calls = 0

    def feed(self, text: str) -> tuple[str, list[Call]]:
        self._held += text
        shown: list[str] = []
        calls: list[Call] = []
        while (start := self._held.find(OPEN)) >= 0:
            end = self._held.find(CLOSE, start)
            if end < 0:
                break
            call = read_call(self._held[start + len(OPEN) : end], self._names)
            if call is None:
                shown.append(self._text(self._held[: end + len(CLOSE)]))
            else:
                shown.append(self._text(self._held[:start]))
                self._space = ""
                calls.append(call)
                self.calls += 1
            self._held = self._held[end + len(CLOSE) :]
        start = self._held.find(OPEN)
        cut = start if start >= 0 else len(self._held) - _partial_open(self._held)
        shown.append(self._text(self._held[:cut]))
        self._held = self._held[cut:]
        return "".join(shown), calls

    def finish(self) -> str:
        """What is still held: an unclosed block, and whitespace unless a call came."""
        rest = self._space + self._held
        self._space = self._held = ""
        return rest.rstrip() if self.calls else rest

    def _text(self, text: str) -> str:
        body = text.rstrip()
        if not body:
            self._space += text
            return ""
        out = self._space + body
        if self.calls and not self._shown:
            out = out.lstrip()
        self._space = text[len(body) :]
        self._shown = True
        return out


def _partial_open(text: str) -> int:
    """How many characters at the end of `text` could begin OPEN."""
    for size in range(min(len(OPEN) - 1, len(text)), 0, -1):
        if OPEN.startswith(text[-size:]):
            return size
    return 0
