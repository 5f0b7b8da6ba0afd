"""Tools (function calling) through the gateway with the official `openai` SDK, on two real
nodes serving a copy of SmolLM2 whose chat template declares tool support
(tests/tool_model.py), beside the test mesh's SmolLM2, whose template does not."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest
from tests.gateway._gateway_helpers import API_KEY, start_gateway, wait_for_peers
from tests.helpers import answer_to
from tests.tool_model import TOOL_MODEL_ID, make_tool_model

from dinet.client.network import open_network
from dinet.client.structured import tool_call_grammar
from dinet.config import ClientSettings
from dinet.gateway._tools import split_calls
from dinet.node.local_mesh import NodeProcess, start_node
from dinet.wire.messages import ChatMessage, GenerationParams, Tool

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather now in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "description": "The time now", "parameters": {"type": "object"}},
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
GREEDY = {"temperature": 0, "max_tokens": 40}


@pytest.fixture(scope="module")
def tool_nodes(mesh, tmp_path_factory) -> Iterator[list[NodeProcess]]:
    """Two nodes serving the tool model, joined to the mesh."""
    root = tmp_path_factory.mktemp("tools")
    path = make_tool_model(root / "model")
    nodes: list[NodeProcess] = []
    try:
        for name in ("a", "b"):
            nodes.append(
                start_node(root / name, bootstrap=mesh.bootstrap[:1], extra_args=["--model", str(path)])
            )
        yield nodes
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture(scope="module")
def tool_client(mesh, tool_nodes, tmp_path_factory) -> Iterator[openai.OpenAI]:
    """The `openai` client, pointed at a gateway that knows the mesh and the tool nodes."""
    bootstrap = ["--bootstrap", tool_nodes[0].addr, "--bootstrap", mesh.bootstrap[0]]
    gateway = start_gateway(tmp_path_factory.mktemp("tools-gateway"), [*bootstrap, "--api-key", API_KEY])
    try:
        wait_for_peers(gateway, len(mesh.nodes) + len(tool_nodes))
        yield openai.OpenAI(base_url=gateway.base_url, api_key=API_KEY, max_retries=0, timeout=120)
    finally:
        gateway.stop()


def test_a_model_whose_template_declares_no_tools_is_refused_naming_tools(tool_client):
    with pytest.raises(openai.BadRequestError) as refused:
        tool_client.chat.completions.create(
            model="smollm2-135m-instruct", messages=ASK, tools=[WEATHER], **GREEDY
        )  # fmt: skip
    error = refused.value.body
    assert refused.value.status_code == 400 and isinstance(error, dict)
    assert error["param"] == "tools" and "declares no tool support" in error["message"]


def test_a_required_call_comes_back_as_tool_calls(tool_client):
    completion = tool_client.chat.completions.create(
        model=TOOL_MODEL_ID, messages=ASK, tools=[WEATHER, TIME], tool_choice="required", **GREEDY
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name in ("get_weather", "get_time")
    assert isinstance(json.loads(call.function.arguments), dict)


def test_a_named_function_is_the_one_called_and_streams_as_the_whole_answer(tool_client):
    asked = {
        "model": TOOL_MODEL_ID,
        "messages": ASK,
        "tools": [TIME, WEATHER],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "seed": 3,
        **GREEDY,
    }
    whole = tool_client.chat.completions.create(**asked)
    [call] = whole.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather" and "city" in json.loads(call.function.arguments)
    streamed = list(tool_client.chat.completions.create(**asked, stream=True))
    deltas = [d for c in streamed if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert [(d.index, d.function.name, d.function.arguments) for d in deltas] == [
        (0, "get_weather", call.function.arguments)  # type: ignore[union-attr]
    ]
    assert not "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert streamed[-1].choices[0].finish_reason == "tool_calls"


def test_a_call_and_its_result_are_taken_back_for_the_next_turn(tool_client):
    turns = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees and sunny"},
    ]
    first = tool_client.chat.completions.create(model=TOOL_MODEL_ID, messages=ASK, tools=[WEATHER], **GREEDY)
    after = tool_client.chat.completions.create(
        model=TOOL_MODEL_ID, messages=turns, tools=[WEATHER], **GREEDY
    )
    assert after.choices[0].finish_reason in ("stop", "length", "tool_calls")
    # The call and its result are in the prompt the template rendered.
    assert after.usage is not None and first.usage is not None
    assert after.usage.prompt_tokens > first.usage.prompt_tokens + 20


def test_tool_choice_naming_a_function_not_offered_is_refused(tool_client):
    with pytest.raises(openai.BadRequestError) as refused:
        tool_client.chat.completions.create(
            model=TOOL_MODEL_ID,
            messages=ASK,
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "launch"}},
            **GREEDY,
        )
    assert isinstance(refused.value.body, dict) and refused.value.body["param"] == "tool_choice"


async def test_a_sampled_tool_call_is_verified_under_its_grammar(tmp_path, tool_nodes):
    tool = Tool(name="get_weather", parameters=json.dumps(WEATHER["function"]["parameters"]))  # type: ignore[index]
    params = GenerationParams(
        messages=(ChatMessage(role="user", content=ASK[0]["content"]),),
        tools=(tool,),
        grammar=tool_call_grammar([tool]),
        max_tokens=40,
        temperature=1.0,
        seed=5,
    )
    settings = ClientSettings(home=tmp_path / "client", bootstrap=[tool_nodes[0].addr], mdns=False)
    async with open_network(settings) as network:
        await network.discover(None, tool_nodes[0].model_hash, timeout=20, want=len(tool_nodes))
        _, answer = await answer_to(network, params, model_hash=tool_nodes[0].model_hash, verify_rate=1.0)
    _, calls = split_calls(answer.text, {"get_weather"})
    assert [c.name for c in calls] == ["get_weather"], answer.text
    check = answer.verification
    assert check is not None and check.verified is True and check.verifier != answer.peer_id, check
