"""The OpenAI request and response shapes the gateway speaks, and their translation.

Nothing a request asks for is silently ignored. Every field of OpenAI's chat and
completions APIs is either honoured or refused with a RequestError naming it; a field
OpenAI does not have is refused too, as OpenAI refuses it. Some fields are honoured by
doing nothing, because here they change nothing: `user`, `metadata`,
`safety_identifier`, `service_tier` and the prompt-cache fields. A feature dinet does
not have yet is refused only when asked for: its "off" value (`functions: []`,
`best_of: 1`) is taken. `n` answers are n asks with seeds
`seed`, `seed + 1`, ..., run at once, so the router spreads them over peers. `min_p` and
`repetition_penalty` are taken beyond OpenAI's fields, as llama-server and vLLM take them.

`tools` are for models whose chat template declares tool support (the gateway checks the
offers before asking; see `NetworkView.tool_model`). The template renders them; the
answer's `<tool_call>` blocks come back as `tool_calls` (`_tools`). `tool_choice`: "auto"
(the default) lets the model choose; "required" or a named function constrains decoding
to one call (`tool_call_grammar`), so the grammar travels and verification keeps to it;
"none" leaves the tools out of the prompt. `parallel_tool_calls` is honoured by doing
nothing: "auto" reads every call the model writes, a forced choice makes one.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dinet.client.ask import Answer
from dinet.client.structured import json_object_grammar, json_schema_grammar
from dinet.client.vote import MAX_REPLICAS
from dinet.errors import RequestError
from dinet.gateway._tools import Offer, offer, split_calls, wire_tool
from dinet.wire.messages import (
    MAX_LOGIT_BIAS,
    MAX_TOOLS,
    MAX_TOP_LOGPROBS,
    ChatMessage,
    GenerationParams,
    TokenLogprobs,
    Tool,
    ToolCall,
)
from dinet.wire.shard import Draft

Kind = Literal["chat", "completion"]
M = TypeVar("M", bound=BaseModel)
MAX_CHOICES = 8  # `n`: answers to one request, each with its own seed


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _TextPart(_Lenient):
    type: Literal["text"]
    text: str


class _FunctionCall(_Lenient):
    name: str
    arguments: str


class _InToolCall(_Lenient):
    id: str
    type: Literal["function"] = "function"
    function: _FunctionCall


class _InMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[_TextPart] | None = None
    tool_calls: list[_InToolCall] | None = None  # an assistant's
    tool_call_id: str | None = None  # a tool's: the call it answers

    def to_wire(self) -> ChatMessage:
        if isinstance(self.content, list):
            text = "".join(part.text for part in self.content)
        else:
            text = self.content or ""
        role = "system" if self.role == "developer" else self.role
        try:
            calls = tuple(
                ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments)
                for c in self.tool_calls or ()
            )
            return ChatMessage(role=role, content=text, tool_calls=calls, tool_call_id=self.tool_call_id)
        except ValidationError as exc:
            raise RequestError(f"invalid value for messages: {exc.errors()[0]['msg']}", "messages") from None


class _StreamOptions(_Lenient):
    include_usage: bool = False


class _JsonSchema(_Lenient):
    name: str = Field(default="response", max_length=64)
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None  # the grammar keeps to the schema either way


class _ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: _JsonSchema | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> _ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is given with, and only with, type json_schema")
        return self

    def grammar(self) -> str | None:
        if self.type == "json_object":
            return json_object_grammar()
        if self.json_schema is not None:
            return json_schema_grammar(self.json_schema.schema_, "response_format")
        return None


class _Function(_Lenient):
    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict)
    strict: bool | None = None  # a forced call keeps to the schema either way


class _ToolDefinition(_Strict):
    type: Literal["function"]
    function: _Function

    def to_wire(self) -> Tool:
        return wire_tool(self.function.name, self.function.description, self.function.parameters, "tools")


class _Named(_Lenient):
    name: str


class _NamedChoice(_Strict):
    type: Literal["function"]
    function: _Named


class DinetOptions(BaseModel):
    """The request's own `dinet` field: what dinet does beyond the OpenAI API."""

    model_config = ConfigDict(extra="forbid")
    replicas: int = Field(default=1, ge=1, le=MAX_REPLICAS)  # >1: ask that many peers, keep the majority
    draft: Draft = "none"  # "lookup", "model": a chain checks guessed tokens a run at a time (same answer)


# Features not built: taken only at the value that asks for nothing, else refused by name.
NOT_YET = frozenset(
    {
        "functions", "function_call", "audio", "modalities", "prediction",
        "reasoning_effort", "verbosity", "web_search_options", "moderation", "store", "echo",
        "suffix", "best_of",
    }
)  # fmt: skip


class _Common(_Strict):
    model: str = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    stop: str | list[str] | None = None
    n: int | None = Field(default=None, ge=1, le=MAX_CHOICES)
    stream: bool = False
    stream_options: _StreamOptions | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = Field(default=None, max_length=MAX_LOGIT_BIAS)
    # Beyond OpenAI's fields, as llama-server and vLLM take them (the SDK's `extra_body`).
    min_p: float | None = Field(default=None, ge=0.0, lt=1.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=2.0)
    # Honoured by doing nothing: they do not change the answer.
    user: str | None = None
    # dinet's own: true answers through a chain of pipeline stages, false only from
    # whole-model peers; unset, a chain is used only when no peer holds the whole model.
    dinet_sharded: bool | None = None
    dinet: DinetOptions = DinetOptions()


class ChatRequest(_Common):
    messages: list[_InMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    response_format: _ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[_ToolDefinition] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | _NamedChoice | None = None
    # Not yet: refused unless off.
    functions: list[None] | None = Field(default=None, max_length=0)
    function_call: Literal["none", "auto", None] = None
    audio: None = None
    modalities: list[Literal["text"]] | None = None
    prediction: None = None
    reasoning_effort: None = None
    verbosity: None = None
    web_search_options: None = None
    moderation: None = None
    store: Literal[False, None] = None  # nothing is stored: asking for it is refused
    # Honoured by doing nothing: they do not change the answer.
    metadata: dict[str, str] | None = None
    parallel_tool_calls: bool | None = None  # see above
    safety_identifier: str | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: dict[str, Any] | None = None

    def offer(self) -> Offer:
        """The functions to render, and the grammar of a forced call (`_tools.offer`)."""
        choice = self.tool_choice
        if isinstance(choice, _NamedChoice):
            return offer([t.to_wire() for t in self.tools or ()], "required", choice.function.name)
        return offer([t.to_wire() for t in self.tools or ()], choice or "auto")


class CompletionRequest(_Common):
    prompt: str | list[str]
    # Not yet: refused unless off.
    echo: Literal[False] = False
    suffix: Literal[None, ""] = None
    best_of: Literal[1, None] = None
    logprobs: int | None = Field(default=None, ge=0, le=5)  # type: ignore[assignment]  # OpenAI's limit


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
        if first["type"] == "extra_forbidden":
            raise RequestError(f"unrecognised request field: {where}", where) from None
        field = str(first["loc"][0]) if first["loc"] else ""
        if field in NOT_YET:
            raise RequestError(f"{field} is not supported by dinet yet: leave it out", field) from None
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
        "logit_bias": _logit_bias(request.logit_bias or {}),
        "presence_penalty": float(request.presence_penalty or 0.0),
        "frequency_penalty": float(request.frequency_penalty or 0.0),
        "min_p": float(request.min_p or 0.0),
        "repetition_penalty": float(request.repetition_penalty or 1.0),
    }
    if isinstance(request, ChatRequest):
        fields["messages"] = tuple(m.to_wire() for m in request.messages)
        if request.response_format is not None:
            fields["grammar"] = request.response_format.grammar()
        offered = request.offer()
        if offered.tools:
            fields["tools"] = offered.tools
            if request.logprobs:
                raise RequestError("logprobs together with tools are not supported yet", "logprobs")
            if offered.grammar is not None and fields.get("grammar") is not None:
                raise RequestError(
                    "a forced tool call and a response_format do not go together", "tool_choice"
                )
            if offered.grammar is not None:
                fields["grammar"] = offered.grammar
        if request.top_logprobs is not None and not request.logprobs:
            raise RequestError("top_logprobs needs logprobs: true", "top_logprobs")
        if request.logprobs:
            fields["logprobs"] = request.top_logprobs or 0
    else:
        fields["logprobs"] = request.logprobs
        prompts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
        if len(prompts) != 1:
            raise RequestError("give exactly one prompt (batches are not supported)", "prompt")
        fields["prompt"] = prompts[0]
    return checked_params(fields)


def choice_params(params: GenerationParams, n: int | None) -> list[GenerationParams]:
    """The request of each of the `n` choices: the same but for the seed, one more each."""
    return [params.model_copy(update={"seed": (params.seed + i) % 2**63}) for i in range(n or 1)]


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


def _logit_bias(bias: dict[str, float]) -> tuple[tuple[int, float], ...]:
    """OpenAI's `{"token id": bias}` as the wire's pairs, by token id."""
    pairs = []
    for key, value in bias.items():
        if not (key.isascii() and key.isdigit()) or not -100.0 <= value <= 100.0:
            raise RequestError("logit_bias maps token ids to biases from -100 to 100", "logit_bias")
        pairs.append((int(key), float(value)))
    return tuple(sorted(pairs))


def random_seed() -> int:
    """A fresh seed, for an API that has none or a request that gives none."""
    return secrets.randbelow(2**63)


def new_id(kind: Kind) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex


def usage(*answers: Answer) -> dict[str, int]:
    """Of one answer, or of the choices of one request (the prompt counted once)."""
    prompt = answers[0].usage.prompt_tokens
    completion = sum(a.usage.completion_tokens for a in answers)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


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
    kind: Kind,
    response_id: str,
    created: int,
    answers: Sequence[Answer],
    extra: dict[str, object] | None = None,
    seeds: Sequence[int] = (),
    tools: Sequence[Tool] = (),
) -> dict[str, object]:
    """The whole response: a choice per answer (each with its own peer and seed in its
    `dinet` field when there are several); the first answer's in the top `dinet` field.
    With `tools` offered, a chat answer's calls become its message's `tool_calls`."""
    choices = []
    names = {t.name for t in tools}
    for index, answer in enumerate(answers):
        logprobs = logprobs_object(kind, answer.logprobs) if answer.logprobs else None
        choice: dict[str, object] = {"index": index, "finish_reason": answer.finish_reason}
        choice["logprobs"] = logprobs
        if kind == "chat" and names:
            content, calls = split_calls(answer.text, names)
            message: dict[str, object] = {"role": "assistant", "content": content}
            if calls:
                message["tool_calls"] = [call.openai() for call in calls]
                choice["finish_reason"] = finish_reason(answer.finish_reason, bool(calls))
            choice["message"] = message
        elif kind == "chat":
            choice["message"] = {"role": "assistant", "content": answer.text}
        else:
            choice["text"] = answer.text
        if len(answers) > 1:
            choice["dinet"] = {"peer_id": answer.peer_id, "seed": seeds[index] if seeds else None}
        choices.append(choice)
    first = answers[0]
    return {
        "id": response_id,
        "object": "chat.completion" if kind == "chat" else "text_completion",
        "created": created,
        "model": first.model_id,
        "system_fingerprint": first.model_hash[:16],
        "choices": choices,
        "usage": usage(*answers),
        "dinet": {**dinet_extra(first), **(extra or {})},
    }


def finish_reason(reason: str, called: bool) -> str:
    """OpenAI's reason: "tool_calls" for an answer that ended by itself after calling."""
    return "tool_calls" if called and reason == "stop" else reason


def chunk(
    kind: Kind,
    response_id: str,
    created: int,
    model: str,
    text: str | None,
    *,
    first: bool = False,
    finish_reason: str | None = None,
    logprobs: TokenLogprobs | None = None,
    index: int = 0,
    tool_calls: list[dict[str, object]] | None = None,
) -> dict[str, object]:
    """One streamed chunk: some text (with its token's `logprobs` when asked), tool calls
    (each whole, with its `index` among the choice's calls), or the closing one with
    `finish_reason`."""
    token_logprobs = None if logprobs is None else logprobs_object(kind, (logprobs,))
    if kind == "chat":
        delta: dict[str, object] = {}
        if first:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        if tool_calls:
            delta["tool_calls"] = tool_calls
        choice: dict[str, object] = {
            "index": index,
            "delta": delta,
            "finish_reason": finish_reason,
            "logprobs": token_logprobs,
        }
        obj = "chat.completion.chunk"
    else:
        choice = {"index": index, "text": text or "", "finish_reason": finish_reason}
        choice["logprobs"] = token_logprobs
        obj = "text_completion"
    return {"id": response_id, "object": obj, "created": created, "model": model, "choices": [choice]}


def logprobs_object(kind: Kind, tokens: Sequence[TokenLogprobs | None]) -> dict[str, object]:
    """The answer's `logprobs` in OpenAI's shape: the chat API's `content` list, or the
    completions API's parallel lists. A token without log-probabilities (none sent) is
    left out."""
    known = [t for t in tokens if t is not None]
    if kind == "chat":
        content = [
            _token_entry(t.piece, t.logprob, [_token_entry(c.piece, c.logprob) for c in t.top]) for t in known
        ]
        return {"content": content, "refusal": None}
    texts = [_piece_text(t.piece) for t in known]
    offsets = [sum(len(text) for text in texts[:i]) for i in range(len(texts))]
    return {
        "tokens": texts,
        "token_logprobs": [t.logprob for t in known],
        "top_logprobs": [{_piece_text(c.piece): c.logprob for c in t.top} for t in known],
        "text_offset": offsets,
    }


def _token_entry(piece: str, logprob: float, top: list[dict[str, object]] | None = None) -> dict[str, object]:
    raw = bytes.fromhex(piece)
    entry: dict[str, object] = {"token": raw.decode(errors="replace"), "logprob": logprob, "bytes": list(raw)}
    if top is not None:
        entry["top_logprobs"] = top
    return entry


def _piece_text(piece: str) -> str:
    return bytes.fromhex(piece).decode(errors="replace")


def now() -> int:
    return int(time.time())


def sse(event: str, payload: Mapping[str, object]) -> bytes:
    """One server-sent event named by an `event:` line, as Anthropic's API and OpenAI's
    Responses API send them (the chat API's chunks go without a name)."""
    return f"event: {event}\ndata: ".encode() + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"
