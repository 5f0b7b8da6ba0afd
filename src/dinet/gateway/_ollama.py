"""Ollama's /api/chat and /api/generate: requests to GenerationParams, answers to Ollama's
objects (one NDJSON line per token when streamed, the last with `done: true`).

A field that would change the answer and that dinet cannot honour yet is refused with a
RequestError naming it (Ollama's error shape: `{"error": "..."}`), never dropped; a field
that cannot change the answer is accepted and ignored, each with the reason below.

`tools` (OpenAI's shape) are offered as on the chat API, for a model whose chat template
declares tool support; the model chooses whether to call (Ollama has no `tool_choice`).
Calls come back as `message.tool_calls` with their arguments an object, streamed as one
line per call once its block has closed. Ollama's messages carry no call ids: the gateway
numbers an assistant's calls, and a `tool` message answers the first call not yet
answered (of its `tool_name`, when it names one).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dinet.client.ask import Answer
from dinet.client.structured import json_object_grammar, json_schema_grammar
from dinet.engine.adjust import REPETITION_WINDOW
from dinet.errors import RequestError
from dinet.gateway._errors import ApiError
from dinet.gateway._openai import dinet_extra
from dinet.gateway._tools import Call, CallSplitter, offer, split_calls, wire_call, wire_tool
from dinet.wire.messages import ChatMessage, GenerationParams, Tool, ToolCall

Kind = Literal["chat", "generate"]
NDJSON = "application/x-ndjson"

# Ollama's defaults for a request that sets none (its DefaultOptions). Its top_k 40 dinet's
# sampler does not have, and its repeat_penalty 1.1 is not applied unless asked for, so an
# answer here is the same as the OpenAI endpoint's for the same request (greedy answers
# then differ from Ollama's own).
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_P = 0.9

# Options that say how or where a model runs, never which tokens it picks; peers run their
# models as they see fit. num_keep is what Ollama keeps when it shifts a full context, and
# dinet never shifts one: it refuses a prompt that does not fit.
RUNTIME_OPTIONS = frozenset(
    {"num_batch", "num_gpu", "main_gpu", "num_thread", "num_keep"}
    | {"numa", "low_vram", "f16_kv", "use_mmap", "use_mlock"}
)

# Sampling options dinet's sampler does not have yet, each with the value that turns it
# off: that value asks for what dinet does and is accepted; any other is refused.
SAMPLER_OFF: Mapping[str, float] = {
    "top_k": 0,
    "typical_p": 1.0,
    "tfs_z": 1.0,
    "mirostat": 0,
    "penalize_newline": False,
}

# num_predict's "no limit" (-1) and "fill the context" (-2): the gateway's own limit then,
# as for an OpenAI request without max_tokens; the answer then says `done_reason: length`.
_UNLIMITED = (-1, -2)


class _Lenient(BaseModel):
    # Unknown fields are ignored, as Ollama's server does; the known ones that would change
    # the answer are checked one by one below.
    model_config = ConfigDict(extra="ignore")


class _Options(BaseModel):
    model_config = ConfigDict(extra="allow")  # the rest: RUNTIME_OPTIONS, SAMPLER_OFF or refused
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    num_predict: int | None = None
    stop: str | list[str] | None = None
    num_ctx: int | None = None  # checked against the model's context, then ignored
    min_p: float | None = None
    repeat_penalty: float | None = None
    repeat_last_n: int | None = None  # dinet's window is 64 tokens; 0 turns the penalty off
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


class _Function(_Lenient):
    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict)


class _Tool(_Lenient):
    type: Literal["function"] = "function"
    function: _Function


class _CalledFunction(_Lenient):
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class _ToolCall(_Lenient):
    function: _CalledFunction


class _Message(_Lenient):
    role: str
    content: str | None = None
    images: list[Any] | None = None
    tool_calls: list[_ToolCall] | None = None  # an assistant's
    tool_name: str | None = None  # a tool's: the function whose result it is
    thinking: str | None = None


class _Request(_Lenient):
    model: str = Field(min_length=1, max_length=256)
    stream: bool | None = None  # Ollama streams unless told not to
    options: _Options | None = None
    format: str | dict[str, Any] | None = None
    keep_alive: float | str | None = None  # ignored: peers keep their models loaded as they choose
    think: bool | str | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None


class ChatRequest(_Request):
    messages: list[_Message] = []
    tools: list[_Tool] | None = None


class GenerateRequest(_Request):
    prompt: str | None = None
    system: str | None = None
    raw: bool | None = None
    suffix: str | None = None
    template: str | None = None
    context: list[int] | None = None
    images: list[Any] | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None


@dataclass(frozen=True)
class Parsed:
    kind: Kind
    model: str
    stream: bool
    params: GenerationParams | None  # None: nothing to generate, Ollama's way to load a model

    @property
    def tool_names(self) -> frozenset[str]:
        """The functions offered, whose calls are read out of the answer."""
        return frozenset(t.name for t in self.params.tools) if self.params else frozenset()


def parse_request(
    kind: Kind, body: object, models: Sequence[Mapping[str, object]], default_max_tokens: int
) -> Parsed:
    """A request checked and translated, or RequestError naming the field at fault.
    `models`: the network's models (NetworkView.models()), for names and context sizes."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    try:
        request = (ChatRequest if kind == "chat" else GenerateRequest).model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or None
        raise RequestError(f"invalid value for {where or 'body'}: {first['msg']}", where) from None
    _refuse_common(request)
    model = model_name(request.model, models)
    tools: tuple[Tool, ...] = ()
    if isinstance(request, ChatRequest):
        turns = _chat_turns(request)
        prompt = None
        tools = _tools(request)
    else:
        turns, prompt = _generate_input(request)
    if not turns and not prompt:
        params = None
    else:
        fields = _sampling(request.options or _Options(), default_max_tokens, _context(model, models))
        text = {"messages": turns or None, "prompt": prompt, "grammar": _grammar(request)}
        params = _params(fields, **text, **({"tools": tools} if tools else {}))
    return Parsed(kind, model, request.stream is not False, params)


def model_name(name: str, models: Sequence[Mapping[str, object]]) -> str:
    """The model a request names; Ollama's clients add a `:latest` tag to a bare name."""
    ids = {m["id"] for m in models}
    if name not in ids and name.endswith(":latest") and name.removesuffix(":latest") in ids:
        return name.removesuffix(":latest")
    return name


def find_model(name: str, models: Sequence[Mapping[str, object]]) -> Mapping[str, object] | None:
    """The network's entry for a model named by id (with or without `:latest`) or by hash."""
    name = model_name(name, models)
    for entry in models:
        hashes = entry.get("model_hashes")
        if entry["id"] == name or (isinstance(hashes, list) and name in hashes):
            return entry
    return None


def _refuse(field: str, why: str) -> RequestError:
    return RequestError(f"{field}: {why}", field)


def _grammar(request: _Request) -> str | None:
    """The grammar `format` asks for: "json" any JSON, an object a JSON schema."""
    if not request.format:
        return None
    if request.format == "json":
        return json_object_grammar()
    if isinstance(request.format, dict):
        return json_schema_grammar(request.format, "format")
    raise _refuse("format", 'give "json" or a JSON schema')


def _refuse_common(request: _Request) -> None:
    if request.think:  # false is what dinet does: its answers carry no separate thinking
        raise _refuse("think", "dinet does not separate a model's thinking from its answer yet")
    if request.logprobs or request.top_logprobs:
        field = "logprobs" if request.logprobs else "top_logprobs"
        raise _refuse(field, "dinet does not return log probabilities yet")


def _tools(request: ChatRequest) -> tuple[Tool, ...]:
    """The functions offered; the model chooses whether to call one."""
    tools = [
        wire_tool(t.function.name, t.function.description, t.function.parameters, f"tools[{i}]")
        for i, t in enumerate(request.tools or ())
    ]
    return offer(tools, "auto").tools


def _chat_turns(request: ChatRequest) -> tuple[ChatMessage, ...]:
    turns = []
    calls: list[ToolCall] = []  # made so far, in order
    answered: set[str] = set()
    for i, message in enumerate(request.messages):
        where = f"messages[{i}]"
        if message.role not in ("system", "user", "assistant", "tool"):
            raise _refuse(
                f"{where}.role", f"role {message.role!r} is not supported: system, user, assistant or tool"
            )
        for field in ("images", "thinking"):
            if getattr(message, field):
                raise _refuse(f"{where}.{field}", f"{field} in messages are not supported by dinet yet")
        if message.tool_calls and message.role != "assistant":
            raise _refuse(f"{where}.tool_calls", "only an assistant message makes tool calls")
        made = []
        for n, call in enumerate(message.tool_calls or ()):
            function = call.function
            made.append(
                wire_call(f"call_{len(calls)}", function.name, function.arguments, f"{where}.tool_calls[{n}]")
            )
            calls.append(made[-1])
        answers = None
        if message.role == "tool":
            answers = _answered_call(calls, answered, message.tool_name)
            answered.add(answers)
        turns.append(_turn(message.role, message.content or "", f"{where}.content", tuple(made), answers))
    return tuple(turns)


def _answered_call(calls: Sequence[ToolCall], answered: Collection[str], name: str | None) -> str:
    """The id of the call a tool message answers: the first not yet answered (of function
    `name`, if given); with none left, a fresh id, as the message answers a call made elsewhere."""
    for call in calls:
        if call.id not in answered and name in (None, call.name):
            return call.id
    return f"call_{len(calls) + len(answered)}"


def _generate_input(request: GenerateRequest) -> tuple[tuple[ChatMessage, ...], str | None]:
    """The chat turns to format with the model's template, or the raw prompt (`raw: true`)."""
    for field in ("suffix", "template", "context", "images"):
        if getattr(request, field):
            raise _refuse(field, f"{field} is not supported by dinet yet")
    for field in ("width", "height", "steps"):
        if getattr(request, field) is not None:
            raise _refuse(field, "dinet serves no image generation models")
    if request.raw:
        if request.system:
            raise _refuse("system", "a raw prompt takes no system message: put it in the prompt")
        return (), request.prompt or None
    turns = []
    if request.system:
        turns.append(_turn("system", request.system, "system"))
    if request.prompt:
        turns.append(_turn("user", request.prompt, "prompt"))
    return tuple(turns), None


def _turn(
    role: str, content: str, where: str, calls: tuple[ToolCall, ...] = (), answers: str | None = None
) -> ChatMessage:
    try:
        # The role is checked above.
        return ChatMessage(role=role, content=content, tool_calls=calls, tool_call_id=answers)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise RequestError(f"invalid value for {where}: {exc.errors()[0]['msg']}", where) from None


def _context(model: str, models: Sequence[Mapping[str, object]]) -> int | None:
    entry = find_model(model, models)
    context = None if entry is None else entry.get("context")
    return context if isinstance(context, int) else None


def _sampling(options: _Options, default_max_tokens: int, context: int | None) -> dict[str, Any]:
    """GenerationParams' sampling fields from Ollama's `options`."""
    for name, value in (options.model_extra or {}).items():
        if value is None or name in RUNTIME_OPTIONS:
            continue
        if name in SAMPLER_OFF:
            off = json.dumps(SAMPLER_OFF[name])
            if value != SAMPLER_OFF[name]:
                raise _refuse(
                    f"options.{name}", f"not in dinet's sampler yet: only {off}, which turns it off"
                )
            continue
        raise _refuse(f"options.{name}", "unknown or unsupported option")
    if options.num_ctx is not None and context is not None and not 1 <= options.num_ctx <= context:
        raise _refuse("options.num_ctx", f"the model's context is {context} tokens")
    limit = options.num_predict
    if limit is not None and limit not in _UNLIMITED and limit < 1:
        raise _refuse(
            "options.num_predict", "give a positive number of tokens, or -1 for the gateway's limit"
        )
    seed = options.seed
    stop = options.stop
    repeat_penalty = 1.0 if options.repeat_penalty is None else options.repeat_penalty
    if options.repeat_last_n == 0:
        repeat_penalty = 1.0
    elif options.repeat_last_n not in (None, REPETITION_WINDOW):
        raise _refuse("options.repeat_last_n", f"dinet's window is {REPETITION_WINDOW} tokens (or 0: off)")
    return {
        "temperature": float(DEFAULT_TEMPERATURE if options.temperature is None else options.temperature),
        "top_p": float(DEFAULT_TOP_P if options.top_p is None else options.top_p),
        "max_tokens": default_max_tokens if limit is None or limit in _UNLIMITED else limit,
        # Ollama's -1 (and any negative seed) asks for a random one, as does none.
        "seed": secrets.randbelow(2**63) if seed is None or seed < 0 else seed,
        "stop": tuple([stop] if isinstance(stop, str) else stop or ()),
        "min_p": float(options.min_p or 0.0),
        "repetition_penalty": float(repeat_penalty),
        "presence_penalty": float(options.presence_penalty or 0.0),
        "frequency_penalty": float(options.frequency_penalty or 0.0),
    }


# GenerationParams' fields as the request names them, for error messages.
_FIELD_NAMES = {
    "temperature": "options.temperature",
    "top_p": "options.top_p",
    "seed": "options.seed",
    "max_tokens": "options.num_predict",
    "stop": "options.stop",
    "min_p": "options.min_p",
    "repetition_penalty": "options.repeat_penalty",
    "presence_penalty": "options.presence_penalty",
    "frequency_penalty": "options.frequency_penalty",
    "grammar": "format",
}


def _params(fields: dict[str, Any], **text: Any) -> GenerationParams:
    try:
        return GenerationParams(**fields, **text)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else ""
        where = _FIELD_NAMES.get(name, name) or None
        raise RequestError(f"invalid value for {where or 'request'}: {first['msg']}", where) from None


# -- answers ----------------------------------------------------------------------------


def error_body(error: ApiError) -> dict[str, object]:
    return {"error": error.message}


def created_at() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def piece(kind: Kind, model: str, text: str, calls: Sequence[Call] = ()) -> dict[str, object]:
    """A line of a streamed answer with some text or tool calls (or a whole answer's, once done)."""
    line: dict[str, object] = {"model": model, "created_at": created_at()}
    if kind == "chat":
        message: dict[str, object] = {"role": "assistant", "content": text}
        if calls:
            message["tool_calls"] = [{"function": {"name": c.name, "arguments": c.input()}} for c in calls]
        line["message"] = message
    else:
        line["response"] = text
    line["done"] = False
    return line


def loaded(kind: Kind, model: str) -> dict[str, object]:
    """The answer to a request with nothing to generate: the model is ready on the network."""
    return {**piece(kind, model, ""), "done": True, "done_reason": "load"}


@dataclass(frozen=True)
class Timing:
    """perf_counter() times at the gateway: the request arrived, its first token came, it ended."""

    arrived: float
    first_token: float | None
    ended: float

    def durations(self) -> dict[str, int]:
        """Ollama's durations, in ns. Nothing is loaded for a request (peers keep their models
        loaded), and evaluating the prompt is all the wait for the first token: routing and
        the network included."""
        first = self.first_token if self.first_token is not None else self.ended

        def ns(seconds: float) -> int:
            return max(0, round(seconds * 1e9))

        return {
            "total_duration": ns(self.ended - self.arrived),
            "load_duration": 0,
            "prompt_eval_duration": ns(first - self.arrived),
            "eval_duration": ns(self.ended - first),
        }


def finished(
    kind: Kind,
    model: str,
    answer: Answer,
    text: str,
    timing: Timing,
    extra: Mapping[str, object],
    tools: Collection[str] = (),
) -> dict[str, object]:
    """The last line of an answer (`text` empty when streamed, the whole text when not; with
    the names of `tools` offered, the whole text's calls as `tool_calls`). Ollama's
    `done_reason` stays "stop" after a call."""
    content, calls = split_calls(text, tools) if tools else (text, [])
    line = piece(kind, model, content or "", calls)
    durations = timing.durations()
    line.update(
        done=True,
        done_reason=answer.finish_reason,
        total_duration=durations["total_duration"],
        load_duration=durations["load_duration"],
        prompt_eval_count=answer.usage.prompt_tokens,
        prompt_eval_duration=durations["prompt_eval_duration"],
        eval_count=answer.usage.completion_tokens,
        eval_duration=durations["eval_duration"],
        dinet={**dinet_extra(answer), **extra},  # who served it, as in the OpenAI answers
    )
    return line


def ndjson_line(obj: Mapping[str, object]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


class NdjsonShape:
    """A streamed answer as Ollama draws it (a `StreamShape`): a line per token that has
    text, then the `done` line; an error after the first token becomes a last
    `{"error": ...}` line, as Ollama's does. With the names of `tools` offered, calls are
    read out of the text as it streams: a line with `tool_calls` once a call's block closes."""

    def __init__(self, kind: Kind, model: str, tracker: Timed, tools: Collection[str] = ()) -> None:
        self.kind, self.model, self.tracker = kind, model, tracker
        self.splitter = CallSplitter(tools) if tools else None

    def opening(self) -> bytes:
        return b""

    def text(self, text: str) -> bytes:
        if self.splitter is None:
            return ndjson_line(piece(self.kind, self.model, text))
        shown, calls = self.splitter.feed(text)
        return self._lines(shown, calls)

    def closing(self, answer: Answer, extra: dict[str, object]) -> bytes:
        rest = b"" if self.splitter is None else self._lines(self.splitter.finish(), [])
        timing = Timing(self.tracker.arrived, self.tracker.first_at, time.perf_counter())
        return rest + ndjson_line(finished(self.kind, self.model, answer, "", timing, extra))

    def _lines(self, text: str, calls: list[Call]) -> bytes:
        lines = ndjson_line(piece(self.kind, self.model, text)) if text else b""
        if calls:
            lines += ndjson_line(piece(self.kind, self.model, "", calls))
        return lines

    def failure(self, error: ApiError) -> bytes:
        return ndjson_line(error_body(error))


class Timed(Protocol):
    arrived: float  # perf_counter when the request arrived
    first_at: float | None  # and when its first token did
