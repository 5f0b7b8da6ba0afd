"""Tools in Ollama's, Anthropic's and the Responses API's shapes, without a network: requests become the wire
request the chat API makes, and answers holding calls (whole and streamed in any pieces)
are read back by the official clients' own types. The end-to-end tests are in
test_tools.py; the small test model seldom calls a function unless forced, so the call
path of Ollama's API, which cannot force one, is checked here."""

from __future__ import annotations

import json
import random

import anthropic.types
import ollama
import openai.types.responses
import pytest
from tests.gateway.test_tool_calls import CALL

from dinet.client.ask import Answer
from dinet.errors import RequestError
from dinet.gateway import _anthropic as an
from dinet.gateway import _ollama as ol
from dinet.gateway import _responses as rs
from dinet.gateway._openai import generation_params, parse_request
from dinet.wire.ids import ModelHash, PeerId
from dinet.wire.messages import Usage

PARAMETERS = {"type": "object", "properties": {"city": {"type": "string"}}}
TEXT = "Let me look.\n" + CALL
MODELS = [{"id": "m", "model_hashes": ["ab12"], "context": 2048}]


def answer(text: str, finish_reason: str = "stop") -> Answer:
    return Answer(
        text=text, peer_id=PeerId("peer"), model_id="m", model_hash=ModelHash("ab12"),
        usage=Usage(prompt_tokens=9, completion_tokens=20), finish_reason=finish_reason,
        ttft_ms=1.0, tokens_per_s=1.0, peers_tried=(PeerId("peer"),),
    )  # fmt: skip


def pieces(text: str, seed: int) -> list[str]:
    rng = random.Random(seed)
    out, at = [], 0
    while at < len(text):
        size = rng.randint(1, 6)
        out.append(text[at : at + size])
        at += size
    return out


# -- Ollama ---------------------------------------------------------------------------------


def ollama_params(**body: object):
    parsed = ol.parse_request("chat", {"model": "m", **body}, MODELS, 64)
    assert parsed.params is not None
    return parsed.params


def test_ollama_tools_calls_and_results_are_the_chat_apis_wire_request():
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": PARAMETERS}}
    turns = [
        {"role": "user", "content": "Weather in Paris and the time?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            {"function": {"name": "get_time", "arguments": {}}},
        ]},
        {"role": "tool", "tool_name": "get_time", "content": "noon"},
        {"role": "tool", "content": "sunny"},
    ]  # fmt: skip
    ollama_side = ollama_params(messages=turns, tools=[tool])
    openai_turns = [
        turns[0],
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_0", "type": "function", "function": {"name": "get_weather",
                                                              "arguments": '{"city": "Paris"}'}},
            {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "noon"},  # its tool_name says which
        {"role": "tool", "tool_call_id": "call_0", "content": "sunny"},  # the call left
    ]  # fmt: skip
    chat_side = generation_params(
        parse_request("chat", {"model": "m", "messages": openai_turns, "tools": [tool]}), 64
    )
    assert ollama_side.messages == chat_side.messages and ollama_side.tools == chat_side.tools
    assert ollama_side.grammar is None  # Ollama has no tool_choice: the model chooses


def test_ollama_refuses_a_tool_request_it_cannot_keep_by_name():
    for body, param in [
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0]"),
        ({"tools": [{"function": {"name": "f"}}, {"function": {"name": "f"}}]}, "tools"),
        ({"messages": [{"role": "user", "content": "x", "tool_calls": [{"function": {"name": "f"}}]}]},
         "messages[0].tool_calls"),
        ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
    ]:  # fmt: skip
        with pytest.raises(RequestError) as refused:
            ollama_params(**{"messages": [{"role": "user", "content": "x"}], **body})
        assert refused.value.param == param


def test_ollama_answers_carry_calls_as_objects_whole_and_streamed():
    names = {"get_weather"}
    timing = ol.Timing(0.0, 0.5, 1.0)
    whole = ollama.ChatResponse.model_validate(
        ol.finished("chat", "m", answer(TEXT), TEXT, timing, {}, names)
    )
    assert whole.message.content == "Let me look." and whole.done_reason == "stop"
    assert [(c.function.name, dict(c.function.arguments)) for c in whole.message.tool_calls or []] == [
        ("get_weather", {"city": "Paris"})
    ]

    class Tracked:
        arrived, first_at = 0.0, 0.5

    for seed in range(10):
        shape = ol.NdjsonShape("chat", "m", Tracked(), names)
        body = b"".join(shape.text(piece) for piece in pieces(TEXT, seed)) + shape.closing(answer(TEXT), {})
        lines = [ollama.ChatResponse.model_validate_json(line) for line in body.splitlines()]
        assert "".join(line.message.content or "" for line in lines) == "Let me look."
        with_calls = [line for line in lines if line.message.tool_calls]
        assert len(with_calls) == 1 and with_calls[0].message.tool_calls == whole.message.tool_calls
        assert [line.done for line in lines] == [False] * (len(lines) - 1) + [True]


# -- Anthropic ------------------------------------------------------------------------------

WEATHER = {"name": "get_weather", "description": "The weather", "input_schema": PARAMETERS}
ASK = [{"role": "user", "content": "Weather in Paris?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}
USE = {"type": "tool_use", "id": "t", "name": "f"}  # without its input


def anthropic_params(**body: object):
    return an.generation_params(an.parse_request({"model": "m", "max_tokens": 16, "messages": ASK, **body}))


def test_anthropic_tool_choice_gives_the_chat_apis_tools_and_grammar():
    def chat(**fields: object):
        function = {"name": "get_weather", "description": "The weather", "parameters": PARAMETERS}
        body = {
            "model": "m",
            "messages": ASK,
            "tools": [{"type": "function", "function": function}],
            **fields,
        }
        return generation_params(parse_request("chat", body), 16)

    for choice, same in [
        (None, {}),
        ({"type": "auto"}, {"tool_choice": "auto"}),
        ({"type": "any"}, {"tool_choice": "required"}),
        ({"type": "tool", "name": "get_weather"}, {"tool_choice": NAMED}),
        ({"type": "none"}, {"tool_choice": "none"}),
    ]:  # fmt: skip
        ours = anthropic_params(tools=[WEATHER], **({"tool_choice": choice} if choice else {}))
        theirs = chat(**same)
        assert (ours.tools, ours.grammar) == (theirs.tools, theirs.grammar), choice


def test_anthropic_tool_use_and_tool_result_blocks_become_calls_and_tool_messages():
    params = anthropic_params(
        tools=[WEATHER],
        messages=[
            *ASK,
            {"role": "assistant", "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1",
                 "content": [{"type": "text", "text": "sunny"}]},
                {"type": "text", "text": "And tomorrow?"},
            ]},
        ],
    )  # fmt: skip
    assert params.messages is not None
    said = [
        (m.role, m.content, [(c.id, c.name, c.arguments) for c in m.tool_calls], m.tool_call_id)
        for m in params.messages
    ]
    assert said == [
        ("user", "Weather in Paris?", [], None),
        ("assistant", "Let me look.", [("toolu_1", "get_weather", '{"city": "Paris"}')], None),
        ("tool", "sunny", [], "toolu_1"),
        ("user", "And tomorrow?", [], None),
    ]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tool_choice": {"type": "tool"}}, "tool_choice.name"),
        ({"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "other"}}, "tool_choice"),
        ({"tool_choice": {"type": "any"}}, "tool_choice"),
        ({"tools": [{**WEATHER, "type": "web_search_20250305"}]}, "tools.0.type"),
        ({"messages": [{"role": "user", "content": [{**USE, "input": {}}]}]}, "messages.0.content.0"),
        ({"messages": [{"role": "assistant", "content": [USE]}, *ASK]}, "messages.0.content.0.input"),
    ],
)  # fmt: skip
def test_anthropic_refuses_a_tool_request_it_cannot_keep_by_name(body, param):
    with pytest.raises(RequestError) as refused:
        anthropic_params(**body)
    assert refused.value.param == param


def test_anthropic_answers_carry_tool_use_blocks_whole_and_streamed():
    names = {"get_weather"}
    whole = anthropic.types.Message.model_validate(an.message("msg_1", answer(TEXT), {}, names))
    assert whole.stop_reason == "tool_use"
    assert [b.type for b in whole.content] == ["text", "tool_use"]
    use = whole.content[1]
    assert use.type == "tool_use" and use.id.startswith("toolu_") and use.input == {"city": "Paris"}
    assert an.message("msg_2", answer(TEXT, "length"), {}, names)["stop_reason"] == "max_tokens"

    for seed in range(10):
        shape = an.MessageStream("msg_1", "m", names)
        body = (
            shape.opening()
            + b"".join(shape.text(p) for p in pieces(TEXT, seed))
            + shape.closing(answer(TEXT), {})
        )
        events = [json.loads(block.split("data: ", 1)[1]) for block in body.decode().strip().split("\n\n")]
        blocks = [e["content_block"]["type"] for e in events if e["type"] == "content_block_start"]
        assert blocks == ["text", "tool_use"]
        starts = [e["index"] for e in events if e["type"] == "content_block_start"]
        stops = [e["index"] for e in events if e["type"] == "content_block_stop"]
        assert starts == stops == [0, 1]
        deltas = [e["delta"] for e in events if e["type"] == "content_block_delta"]
        assert "".join(d["text"] for d in deltas if d["type"] == "text_delta") == "Let me look."
        assert json.loads("".join(d["partial_json"] for d in deltas if d["type"] == "input_json_delta")) == {
            "city": "Paris"
        }
        assert events[-2]["delta"]["stop_reason"] == "tool_use"


def test_anthropic_a_streamed_answer_of_only_a_call_has_no_text_block_and_one_of_nothing_has_one():
    shape = an.MessageStream("msg_1", "m", {"get_weather"})
    body = shape.opening() + shape.text(CALL) + shape.closing(answer(CALL), {})
    assert [b"tool_use" in line for line in body.split(b"\n\n") if b"content_block_start" in line] == [True]
    empty = an.MessageStream("msg_2", "m", {"get_weather"})
    body = empty.opening() + empty.closing(answer(""), {})
    assert body.count(b"event: content_block_start") == body.count(b"event: content_block_stop") == 1


# -- OpenAI's Responses API -----------------------------------------------------------------

FUNCTION = {"type": "function", "name": "get_weather", "description": "The weather", "parameters": PARAMETERS}


def responses_params(**body: object):
    return rs.generation_params(rs.parse_request({"model": "m", "input": "Weather in Paris?", **body}), 16)


def test_responses_tools_and_function_call_items_are_the_chat_apis_wire_request():
    params = responses_params(
        tools=[FUNCTION],
        tool_choice={"type": "function", "name": "get_weather"},
        input=[
            *ASK,
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "get_weather",
                "arguments": '{"city": "Paris"}',
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        ],
    )
    chat_turns = [
        *ASK,
        {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]  # fmt: skip
    function = {k: v for k, v in FUNCTION.items() if k != "type"}
    chat = generation_params(
        parse_request(
            "chat",
            {"model": "m", "messages": chat_turns, "tools": [{"type": "function", "function": function}]}
            | {"tool_choice": NAMED},
        ),
        16,
    )
    assert (params.messages, params.tools, params.grammar) == (chat.messages, chat.tools, chat.grammar)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools.0"),
        ({"tools": [FUNCTION], "tool_choice": {"type": "function", "name": "other"}}, "tool_choice"),
        ({"tools": [FUNCTION], "tool_choice": {"type": "file_search"}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input.0.call_id"),
    ],
)
def test_responses_refuse_a_tool_request_they_cannot_keep_by_name(body, param):
    with pytest.raises(RequestError) as refused:
        responses_params(**body)
    assert refused.value.param == param


def test_responses_answers_carry_function_call_items_whole_and_streamed():
    request = rs.parse_request({"model": "m", "input": "Weather?", "tools": [FUNCTION]})
    echo = rs.Echo.of(request, rs.generation_params(request, 16))
    whole = openai.types.responses.Response.model_validate(rs.response_body(echo, answer(TEXT), {}))
    assert [item.type for item in whole.output] == ["message", "function_call"]
    assert whole.output_text == "Let me look." and whole.status == "completed"
    call = whole.output[1]
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"} and call.call_id.startswith("call_")

    for seed in range(10):
        shape = rs.ResponseStream(echo)
        body = (
            shape.opening()
            + b"".join(shape.text(p) for p in pieces(TEXT, seed))
            + shape.closing(answer(TEXT), {})
        )
        events = [json.loads(block.split("data: ", 1)[1]) for block in body.decode().strip().split("\n\n")]
        assert [e["sequence_number"] for e in events] == list(range(len(events)))
        added = [
            (e["output_index"], e["item"]["type"])
            for e in events
            if e["type"] == "response.output_item.added"
        ]
        assert added == [(0, "message"), (1, "function_call")]
        text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
        arguments = [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"]
        assert text == "Let me look." and [json.loads(a) for a in arguments] == [{"city": "Paris"}]
        final = openai.types.responses.Response.model_validate(events[-1]["response"])
        done = [e["item"]["id"] for e in events if e["type"] == "response.output_item.done"]
        assert [item.id for item in final.output] == done and final.output_text == "Let me look."
