"""A library call's keyword options, split into what to generate and how to ask.

    params, options = build_request(chat_messages([{"role": "user", "content": "Hi"}]),
                                    {"max_tokens": 32, "max_price": 0.01}, settings)

Every bad name or value is a RequestError naming the option.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, TypedDict

from pydantic import ValidationError

from dinet.client.options import AskOptions
from dinet.client.structured import json_object_grammar, json_schema_grammar
from dinet.config import ClientSettings
from dinet.errors import RequestError
from dinet.routing.select import Policy
from dinet.wire.messages import ChatMessage, GenerationParams


class Options(TypedDict, total=False):
    """The keyword options of `Client.ask`, `chat` and `stream` (all optional)."""

    model: str  # a model id, e.g. "smollm2-135m-instruct"; default: any model a peer serves
    model_hash: str  # one exact version of a model
    max_tokens: int  # default 128
    temperature: float  # default 0: greedy, the same answer on every honest peer
    top_p: float
    seed: int  # with temperature > 0, the same seed gives the same answer
    stop: str | Sequence[str]  # up to 4 strings that end the answer
    presence_penalty: float  # -2 to 2: less (more) likely to say a token again once said
    frequency_penalty: float  # -2 to 2: as presence_penalty, by how often it was said
    repetition_penalty: float  # above 1: tokens among the last 64 of prompt and answer less likely
    min_p: float  # sampled answers: only tokens at least this likely relative to the best
    logit_bias: Mapping[int, float]  # token id -> -100 to 100 added to its logit
    json: bool  # True: the answer is a JSON object (a grammar keeps every token to it)
    json_schema: Mapping[str, Any]  # the answer is JSON matching this JSON Schema
    grammar: str  # the answer keeps to this GBNF grammar (llama.cpp's format, rule `root`)
    sharded: bool | None  # True: through a chain of pipeline stages; False: whole-model peers only
    policy: Policy  # "latency" (default), "throughput" or "cost"
    max_price: float  # most credits per token (a chain: all its stages together)
    deadline_s: float  # cap max_tokens to what can be produced in this time
    only_peers: Collection[str]  # ask no other peer
    verify_rate: float  # fraction of answers re-scored by another peer (1: all)
    verifiers: Collection[str]  # re-scoring only by these peers
    probation_good: float  # good evidence before a peer's answers are checked only at verify_rate
    request_timeout_s: float  # the whole answer
    discover_timeout_s: float  # looking for peers


_GENERATION = (
    "max_tokens", "temperature", "top_p", "seed", "stop",
    "presence_penalty", "frequency_penalty", "repetition_penalty", "min_p", "logit_bias",
)  # fmt: skip
_STRUCTURE = ("json", "json_schema", "grammar")
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def build_request(
    messages: tuple[ChatMessage, ...], options: Mapping[str, Any], settings: ClientSettings
) -> tuple[GenerationParams, AskOptions]:
    unknown = sorted(set(options) - set(Options.__annotations__))
    if unknown:
        raise RequestError(f"unknown option {unknown[0]!r}", unknown[0])
    generation = {name: options[name] for name in _GENERATION if name in options}
    grammar = _grammar(options)
    if grammar is not None:
        generation["grammar"] = grammar
    if isinstance(generation.get("stop"), str):
        generation["stop"] = (generation["stop"],)
    elif "stop" in generation:
        generation["stop"] = tuple(generation["stop"])
    if "logit_bias" in generation:
        generation["logit_bias"] = tuple(sorted(dict(generation["logit_bias"]).items()))
    try:
        params = GenerationParams(messages=messages, **generation)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "messages"
        raise RequestError(f"invalid {name}: {first['msg']}", name) from None
    asking = {
        ("model_id" if k == "model" else k): v
        for k, v in options.items()
        if k not in _GENERATION and k not in _STRUCTURE
    }
    return params, AskOptions.from_settings(settings, **asking)


def chat_messages(messages: str | Sequence[Mapping[str, Any]]) -> tuple[ChatMessage, ...]:
    """OpenAI-style message dicts (or one prompt string, as a user message) as wire messages.

    A `developer` message counts as `system`; content may be a string or a list of text parts."""
    if isinstance(messages, str):
        return (ChatMessage(role="user", content=messages),)
    if not isinstance(messages, Sequence) or not messages:
        raise RequestError("messages must be a non-empty list of {'role': ..., 'content': ...}", "messages")
    return tuple(_message(i, m) for i, m in enumerate(messages))


def _message(i: int, message: object) -> ChatMessage:
    where = f"messages[{i}]"
    if not isinstance(message, Mapping):
        raise RequestError(f"{where} must be a dict with 'role' and 'content'", "messages")
    role = _ROLES.get(message.get("role"))  # type: ignore[arg-type]
    if role is None:
        raise RequestError(f"{where}: role must be one of {', '.join(_ROLES)}", "messages")
    content = message.get("content")
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        if not all(
            isinstance(p, Mapping) and p.get("type") == "text" and isinstance(p.get("text"), str)
            for p in content
        ):
            raise RequestError(f"{where}: only text content parts are supported", "messages")
        content = "".join(p["text"] for p in content)
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise RequestError(f"{where}: content must be a string or a list of text parts", "messages")
    try:
        return ChatMessage(role=role, content=content)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise RequestError(f"{where}: {exc.errors()[0]['msg']}", "messages") from None


def _grammar(options: Mapping[str, Any]) -> str | None:
    """The grammar that `json`, `json_schema` or `grammar` asks for (at most one of them)."""
    given = [name for name in _STRUCTURE if options.get(name) not in (None, False)]
    if len(given) > 1:
        raise RequestError(f"give one of {', '.join(given)}, not several", given[1])
    if not given:
        return None
    if given[0] == "json":
        return json_object_grammar()
    if given[0] == "json_schema":
        return json_schema_grammar(dict(options["json_schema"]), "json_schema")
    return str(options["grammar"])
