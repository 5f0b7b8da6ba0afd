"""Tool calls read out of answers, whole and streamed, and tool requests as the wire
request they become (no network: the end-to-end tests are in test_tools.py)."""

from __future__ import annotations

import json
import random

import pytest

from dinet.errors import RequestError
from dinet.gateway._openai import generation_params, parse_request
from dinet.gateway._tools import CallSplitter, split_calls

NAMES = {"get_weather", "get_time"}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
TEXTS = [
    "Plain words, no call.",
    CALL,
    "Let me look.\n" + CALL + '\n<tool_call>{"name": "get_time", "arguments": "{}"}</tool_call>\n',
    '<tool_call>{"name": "launch", "arguments": {}}</tool_call> not offered',
    "<tool_call>not json</tool_call>",
    'cut off <tool_call>\n{"name": "get_wea',
    "x < y and <tool_ca",
]
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def test_well_formed_calls_are_read_and_everything_else_stays_text():
    assert split_calls(TEXTS[0], NAMES) == ("Plain words, no call.", [])
    content, calls = split_calls(TEXTS[2], NAMES)
    assert content == "Let me look."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {}),
    ]
    assert split_calls(CALL, NAMES)[0] is None
    for kept in TEXTS[3:]:
        assert split_calls(kept, NAMES) == (kept, [])


@pytest.mark.parametrize("text", TEXTS)
def test_streamed_in_any_pieces_the_calls_and_text_are_those_of_the_whole(text):
    whole_content, whole_calls = split_calls(text, NAMES)
    rng = random.Random(text)
    for _ in range(30):
        splitter, shown, calls, at = CallSplitter(NAMES), "", [], 0
        while at < len(text):
            size = rng.randint(1, 6)
            piece, new = splitter.feed(text[at : at + size])
            shown, calls, at = shown + piece, calls + new, at + size
        shown += splitter.finish()
        assert (shown or None, calls) == (whole_content, whole_calls)


def request(**fields: object):
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return generation_params(parse_request("chat", body), 16)


def test_tool_choice_decides_what_the_request_carries():
    auto = request(tools=[TOOL])
    assert [t.name for t in auto.tools] == ["get_weather"] and auto.grammar is None
    assert json.loads(auto.tools[0].parameters) == TOOL["function"]["parameters"]  # type: ignore[index]
    forced = request(tools=[TOOL], tool_choice="required")
    assert forced.grammar is not None and forced.grammar.startswith('root ::= "<tool_call>\\n" call')
    named = request(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert named.grammar == forced.grammar
    assert request(tools=[TOOL], tool_choice="none").tools == ()


def test_follow_up_turns_carry_calls_and_results():
    params = request(
        tools=[TOOL],
        messages=[
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
            ]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ],
    )  # fmt: skip
    assert params.uses_tools and params.messages is not None
    assert params.messages[1].tool_calls[0].name == "get_weather" and params.messages[2].tool_call_id == "c1"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        (
            {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "other"}}},
            "tool_choice",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [TOOL, TOOL]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools"),
        ({"tools": [TOOL], "logprobs": True}, "logprobs"),
        (
            {"tools": [TOOL], "tool_choice": "required", "response_format": {"type": "json_object"}},
            "tool_choice",
        ),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages"),
    ],
)
def test_a_tool_request_that_cannot_be_kept_is_refused_by_name(fields, param):
    with pytest.raises(RequestError) as refused:
        request(**fields)
    assert refused.value.param == param
