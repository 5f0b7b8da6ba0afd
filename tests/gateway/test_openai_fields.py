"""Every field of OpenAI's chat and completions requests is honoured or refused by name,
none silently ignored (issue 23). The lists walked are the official `openai` SDK's own,
so a field a newer SDK adds fails here until it is decided."""

from __future__ import annotations

import pytest
from openai.types import completion_create_params
from openai.types.chat import completion_create_params as chat_create_params

from dinet.errors import RequestError
from dinet.gateway._openai import generation_params, parse_request

MESSAGES = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}

# field: (a value that asks for something, honoured?)
CHAT_FIELDS = {
    "model": ("m", True),
    "messages": (MESSAGES, True),
    "max_tokens": (8, True),
    "max_completion_tokens": (8, True),
    "temperature": (0.5, True),
    "top_p": (0.9, True),
    "seed": (7, True),
    "stop": (["\n"], True),
    "stream": (True, True),
    "stream_options": ({"include_usage": True}, True),
    "response_format": ({"type": "json_object"}, True),
    "user": ("someone", True),  # honoured by doing nothing, as each below
    "metadata": ({"k": "v"}, True),
    "safety_identifier": ("x", True),
    "service_tier": ("auto", True),
    "prompt_cache_key": ("k", True),
    "prompt_cache_retention": ("24h", True),
    "prompt_cache_options": ({}, True),
    "parallel_tool_calls": (False, True),
    "frequency_penalty": (0.5, True),
    "presence_penalty": (0.5, True),
    "logit_bias": ({"50256": -100}, True),
    "logprobs": (True, True),
    "n": (2, True),
    "tools": ([TOOL], True),  # for models whose template declares tool support (test_tools)
    "tool_choice": ("required", False),  # without tools (see below; with them, test_tools)
    "functions": ([TOOL["function"]], False),
    "function_call": ({"name": "f"}, False),
    "audio": ({"voice": "alloy", "format": "wav"}, False),
    "modalities": (["text", "audio"], False),
    "prediction": ({"type": "content", "content": "x"}, False),
    "top_logprobs": (3, False),  # without logprobs: true (see below)
    "reasoning_effort": ("low", False),
    "verbosity": ("low", False),
    "web_search_options": ({}, False),
    "moderation": ({}, False),
    "store": (True, False),
}
COMPLETION_FIELDS = {
    "model": ("m", True),
    "prompt": ("Once", True),
    "max_tokens": (8, True),
    "temperature": (0.5, True),
    "top_p": (0.9, True),
    "seed": (7, True),
    "stop": ("\n", True),
    "stream": (True, True),
    "stream_options": ({"include_usage": True}, True),
    "user": ("someone", True),
    "n": (2, True),
    "best_of": (2, False),
    "echo": (True, False),
    "suffix": ("end", False),
    "logprobs": (2, True),
    "frequency_penalty": (0.5, True),
    "presence_penalty": (0.5, True),
    "logit_bias": ({"50256": -100}, True),
}
BASE = {"chat": {"model": "m", "messages": MESSAGES}, "completion": {"model": "m", "prompt": "Once"}}


def sdk_fields(params: type) -> set[str]:
    return set(params.__annotations__) | {"stream"}


def test_the_tables_hold_every_field_of_the_sdk():
    """Every field of the installed SDK is decided (an older SDK within the range may lack
    some the tables hold)."""
    assert sdk_fields(chat_create_params.CompletionCreateParamsBase) <= set(CHAT_FIELDS)
    assert sdk_fields(completion_create_params.CompletionCreateParamsBase) <= set(COMPLETION_FIELDS)


@pytest.mark.parametrize(
    ("kind", "field", "value", "honoured"),
    [("chat", f, v, h) for f, (v, h) in CHAT_FIELDS.items()]
    + [("completion", f, v, h) for f, (v, h) in COMPLETION_FIELDS.items()],
)
def test_a_field_is_honoured_or_refused_by_name(kind, field, value, honoured):
    body = {**BASE[kind], field: value}
    if honoured:
        generation_params(parse_request(kind, body), 16)
        return
    with pytest.raises(RequestError) as refused:
        generation_params(parse_request(kind, body), 16)
    assert refused.value.param == field and field in str(refused.value)


@pytest.mark.parametrize("field", ["best_of", "tools"])
def test_a_feature_not_asked_for_is_taken(field):
    off = {"best_of": 1, "tools": []}[field]
    kind = "completion" if field == "best_of" else "chat"
    parse_request(kind, {**BASE[kind], field: off})


def test_a_field_openai_does_not_have_is_refused_by_name():
    with pytest.raises(RequestError) as refused:
        parse_request("chat", {**BASE["chat"], "top_k": 40})
    assert refused.value.param == "top_k"


def test_response_formats_become_the_grammar_the_request_carries():
    def grammar(response_format: object) -> str | None:
        return generation_params(
            parse_request("chat", {**BASE["chat"], "response_format": response_format}), 16
        ).grammar

    assert grammar({"type": "text"}) is None
    assert "object" in (grammar({"type": "json_object"}) or "")
    schema = {"type": "object", "properties": {"colour": {"enum": ["red", "blue"]}}, "required": ["colour"]}
    made = grammar({"type": "json_schema", "json_schema": {"name": "c", "schema": schema, "strict": True}})
    assert made is not None and "red" in made and "blue" in made and "colour" in made
    with pytest.raises(RequestError) as refused:
        grammar({"type": "json_schema"})
    assert refused.value.param == "response_format"


def test_sampling_controls_reach_the_request():
    body = {
        **BASE["chat"],
        "presence_penalty": 0.5,
        "frequency_penalty": -0.25,
        "logit_bias": {"7": 3, "2": -100},
        "min_p": 0.05,
        "repetition_penalty": 1.1,
    }
    params = generation_params(parse_request("chat", body), 16)
    assert (params.presence_penalty, params.frequency_penalty) == (0.5, -0.25)
    assert params.logit_bias == ((2, -100.0), (7, 3.0))
    assert (params.min_p, params.repetition_penalty) == (0.05, 1.1)
    for bad in ({"x": 1}, {"7": 101}):
        with pytest.raises(RequestError) as refused:
            generation_params(parse_request("chat", {**BASE["chat"], "logit_bias": bad}), 16)
        assert refused.value.param == "logit_bias"


def test_logprobs_reach_the_request():
    def asked(kind: str, **fields: object) -> int | None:
        return generation_params(parse_request(kind, {**BASE[kind], **fields}), 16).logprobs

    assert asked("chat") is None and asked("chat", logprobs=False) is None
    assert asked("chat", logprobs=True) == 0 and asked("chat", logprobs=True, top_logprobs=5) == 5
    assert asked("completion", logprobs=3) == 3 and asked("completion") is None
    for kind, fields in (("chat", {"logprobs": True, "top_logprobs": 21}), ("completion", {"logprobs": 6})):
        with pytest.raises(RequestError) as refused:
            parse_request(kind, {**BASE[kind], **fields})
        assert refused.value.param in fields


def test_a_message_too_long_is_a_request_error_not_a_crash():
    with pytest.raises(RequestError) as refused:
        generation_params(
            parse_request("chat", {**BASE["chat"], "messages": [{"role": "user", "content": "x" * 70_000}]}),
            16,
        )
    assert refused.value.param == "messages"
