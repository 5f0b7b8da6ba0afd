"""Tools (function calling) through the gateway with the official `openai`, `ollama` and
`anthropic` clients, on two real nodes serving a copy of SmolLM2 whose chat template
declares tool support (tests/tool_model.py), beside the test mesh's SmolLM2, whose
template does not. One gateway serves every API here: the suite starts no more nodes."""

from __future__ import annotations

import json
from collections.abc import Iterator

import anthropic
import httpx
import ollama
import openai
import pytest
from tests.gateway._gateway_helpers import API_KEY, GatewayProcess, start_gateway, wait_for_peers
from tests.helpers import answer_to
from tests.tool_model import TOOL_MODEL_ID, make_tool_model

from dinet.client.network import open_network
from dinet.client.structured import tool_call_grammar
from dinet.config import ClientSettings
from dinet.errors import RequestError
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
def tool_gateway(mesh, tool_nodes, tmp_path_factory) -> Iterator[GatewayProcess]:
    """A gateway that knows the mesh and the tool nodes."""
    bootstrap = ["--bootstrap", tool_nodes[0].addr, "--bootstrap", mesh.bootstrap[0]]
    gateway = start_gateway(tmp_path_factory.mktemp("tools-gateway"), [*bootstrap, "--api-key", API_KEY])
    try:
        wait_for_peers(gateway, len(mesh.nodes) + len(tool_nodes))
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture(scope="module")
def tool_client(tool_gateway) -> openai.OpenAI:
    """The `openai` client, pointed at the tool gateway."""
    return openai.OpenAI(base_url=tool_gateway.base_url, api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def tool_ollama(tool_gateway) -> ollama.Client:
    return ollama.Client(host=tool_gateway.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120)


@pytest.fixture(scope="module")
def tool_claude(tool_gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=tool_gateway.url, api_key=API_KEY, max_retries=0, timeout=120)


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


# -- the Python client's own routing, with no gateway in front ---------------------------------


def weather_question(max_tokens: int = 8) -> GenerationParams:
    tool = Tool(name="get_weather", parameters=json.dumps(WEATHER["function"]["parameters"]))  # type: ignore[index]
    content = ASK[0]["content"]
    return GenerationParams(
        messages=(ChatMessage(role="user", content=content),), tools=(tool,), max_tokens=max_tokens
    )


async def test_a_direct_ask_with_tools_naming_no_model_asks_only_peers_with_tool_support(
    tmp_path, mesh, tool_nodes
):
    bootstrap = [mesh.bootstrap[0], tool_nodes[0].addr]
    settings = ClientSettings(home=tmp_path / "client", bootstrap=bootstrap, mdns=False)
    tool_peers = {n.peer_id for n in tool_nodes}
    async with open_network(settings) as network:
        await network.discover(None, None, timeout=20, want=len(tool_nodes), tools=True)
        others = {p.peer_id for p in network.candidates(None, None)} - tool_peers
        assert others, "peers without tool support are known too"
        assert {p.peer_id for p in network.candidates(None, None, tools=True)} == tool_peers
        asked: list[str] = []
        _, answer = await answer_to(
            network, weather_question(), on_attempt=asked.append, verify_rate=0.0, probation_good=0.0
        )
    assert answer.model_id == TOOL_MODEL_ID and asked and set(asked) <= tool_peers


async def test_a_direct_ask_with_tools_for_a_model_without_them_is_refused_naming_tools(tmp_path, mesh):
    settings = ClientSettings(home=tmp_path / "client", bootstrap=mesh.bootstrap[:1], mdns=False)
    async with open_network(settings) as network:
        with pytest.raises(RequestError) as refused:
            await answer_to(
                network, weather_question(), model_id="smollm2-135m-instruct", discover_timeout_s=1.0
            )
        assert refused.value.param == "tools" and "declares no tool support" in str(refused.value)
        with pytest.raises(RequestError) as chained:
            await answer_to(network, weather_question(), sharded=True)
        assert chained.value.param == "tools" and "chain" in str(chained.value)


# -- /v1/models and /api/show say which models take tools; tools count towards the prompt --


def test_models_and_ollamas_show_say_which_models_have_tool_support(tool_client, tool_ollama, tool_nodes):
    listed = {m.id: m.model_extra or {} for m in tool_client.models.list().data}
    assert listed[TOOL_MODEL_ID]["tools"] is True
    assert listed[TOOL_MODEL_ID]["tool_model_hashes"] == [tool_nodes[0].model_hash]
    assert listed["smollm2-135m-instruct"]["tools"] is False
    assert listed["smollm2-135m-instruct"]["tool_model_hashes"] == []
    assert tool_ollama.show(TOOL_MODEL_ID).capabilities == ["completion", "tools"]
    assert tool_ollama.show("smollm2-135m-instruct").capabilities == ["completion"]


def test_tool_definitions_count_towards_the_nodes_prompt_limit(tool_client):
    # Each definition is within the protocol's own cap, five of them are not within a
    # node's 64,000 characters of prompt, though the messages are a few words.
    tools = [
        {
            "type": "function",
            "function": {"name": f"f{i}", "description": "x" * 15_000, "parameters": {"type": "object"}},
        }
        for i in range(5)
    ]
    with pytest.raises(openai.BadRequestError) as refused:
        tool_client.chat.completions.create(model=TOOL_MODEL_ID, messages=ASK, tools=tools, **GREEDY)  # type: ignore[arg-type]
    error = refused.value.body
    assert isinstance(error, dict) and "characters above this node's limit of 64000" in error["message"]


# -- Ollama's /api/chat (`ollama` client) ---------------------------------------------------

OLLAMA_GREEDY = {"temperature": 0, "num_predict": 40}


def test_ollama_chat_with_tools_renders_them_and_streams_the_whole_answer(tool_ollama):
    # The small model answers this in words rather than a call, as on the chat API
    # (test_tool_shapes reads calls in Ollama's shape); the tools still reach its template.
    without = tool_ollama.chat(model=TOOL_MODEL_ID, messages=ASK, options=OLLAMA_GREEDY)
    whole = tool_ollama.chat(model=TOOL_MODEL_ID, messages=ASK, tools=[WEATHER], options=OLLAMA_GREEDY)
    assert (whole.prompt_eval_count or 0) > (without.prompt_eval_count or 0) + 20, (
        "the tools are in the prompt"
    )
    assert whole.done and whole.done_reason in ("stop", "length") and whole.message.content
    streamed = list(
        tool_ollama.chat(
            model=TOOL_MODEL_ID, messages=ASK, tools=[WEATHER], options=OLLAMA_GREEDY, stream=True
        )
    )
    assert "".join(line.message.content or "" for line in streamed) == whole.message.content
    assert [line.message.tool_calls for line in streamed] == [None] * len(
        streamed
    ) and not whole.message.tool_calls
    assert streamed[-1].done and streamed[-1].done_reason == whole.done_reason


def test_ollama_takes_a_call_and_its_result_back_for_the_next_turn(tool_ollama):
    call = {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    turns = [
        *ASK,
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_name": "get_weather", "content": "18 degrees and sunny"},
    ]
    first = tool_ollama.chat(model=TOOL_MODEL_ID, messages=ASK, tools=[WEATHER], options=OLLAMA_GREEDY)
    after = tool_ollama.chat(model=TOOL_MODEL_ID, messages=turns, tools=[WEATHER], options=OLLAMA_GREEDY)
    assert after.done and after.done_reason in ("stop", "length")
    # The call and its result are in the prompt the template rendered.
    assert (after.prompt_eval_count or 0) > (first.prompt_eval_count or 0) + 20


def test_ollama_tools_for_a_model_without_tool_support_are_refused_naming_tools(tool_ollama):
    with pytest.raises(ollama.ResponseError) as refused:
        tool_ollama.chat(model="smollm2-135m-instruct", messages=ASK, tools=[WEATHER], options=OLLAMA_GREEDY)
    assert refused.value.status_code == 400 and "declares no tool support" in refused.value.error


# -- Anthropic's /v1/messages (`anthropic` client) -------------------------------------------

CLAUDE_WEATHER = {
    "name": "get_weather",
    "description": "The weather now in a city",
    "input_schema": WEATHER["function"]["parameters"],  # type: ignore[index]
}
CLAUDE_TIME = {"name": "get_time", "description": "The time now", "input_schema": {"type": "object"}}
CLAUDE = {"model": TOOL_MODEL_ID, "max_tokens": 40, "messages": ASK, "extra_body": {"temperature": 0}}


def test_anthropic_a_forced_tool_comes_back_as_a_tool_use_block_whole_and_streamed(tool_claude):
    asked = {
        **CLAUDE,
        "tools": [CLAUDE_TIME, CLAUDE_WEATHER],
        "tool_choice": {"type": "tool", "name": "get_weather"},
    }
    whole = tool_claude.messages.create(**asked)
    assert whole.stop_reason == "tool_use"
    [use] = [block for block in whole.content if block.type == "tool_use"]
    assert use.id.startswith("toolu_") and use.name == "get_weather"
    assert isinstance(use.input, dict) and "city" in use.input

    with tool_claude.messages.stream(**asked) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert [(b.name, b.input) for b in final.content if b.type == "tool_use"] == [(use.name, use.input)]


def test_anthropic_streams_a_call_as_a_tool_use_block_with_its_input_as_json(tool_gateway):
    body = {
        "model": TOOL_MODEL_ID, "max_tokens": 40, "temperature": 0, "messages": ASK, "stream": True,
        "tools": [CLAUDE_WEATHER], "tool_choice": {"type": "any"},
    }  # fmt: skip
    headers = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}
    reply = httpx.post(f"{tool_gateway.url}/v1/messages", json=body, headers=headers, timeout=120)
    events = [
        (block.split("\n")[0].removeprefix("event: "), json.loads(block.split("data: ", 1)[1]))
        for block in reply.text.strip().split("\n\n")
    ]
    starts = [data["content_block"] for name, data in events if name == "content_block_start"]
    assert [b["type"] for b in starts] == ["tool_use"] and starts[0]["name"] == "get_weather"
    partial = [data["delta"]["partial_json"] for name, data in events if name == "content_block_delta"]
    assert "city" in json.loads("".join(partial))
    names = [name for name, _ in events]
    assert names.count("content_block_start") == names.count("content_block_stop") == 1
    delta = next(data for name, data in events if name == "message_delta")
    assert delta["delta"]["stop_reason"] == "tool_use"


def test_anthropic_takes_tool_use_and_tool_result_back_for_the_next_turn(tool_claude):
    turns = [
        *ASK,
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 degrees and sunny"}],
        },
    ]
    first = tool_claude.messages.create(**{**CLAUDE, "tools": [CLAUDE_WEATHER]})
    after = tool_claude.messages.create(**{**CLAUDE, "messages": turns, "tools": [CLAUDE_WEATHER]})
    assert after.stop_reason in ("end_turn", "max_tokens", "tool_use")
    assert after.usage.input_tokens > first.usage.input_tokens + 20


def test_anthropic_tools_for_a_model_without_tool_support_are_refused_naming_tools(tool_claude):
    with pytest.raises(anthropic.BadRequestError) as refused:
        tool_claude.messages.create(**{**CLAUDE, "model": "smollm2-135m-instruct", "tools": [CLAUDE_WEATHER]})
    assert "tools" in refused.value.message and "declares no tool support" in refused.value.message


# -- OpenAI's Responses API (`openai` client) ------------------------------------------------

FUNCTIONS = [{"type": "function", **t["function"]} for t in (TIME, WEATHER)]  # type: ignore[dict-item]
RESPOND = {"model": TOOL_MODEL_ID, "input": ASK, "temperature": 0, "max_output_tokens": 40}


def test_responses_a_forced_function_comes_back_as_a_function_call_item_whole_and_streamed(tool_client):
    asked = {**RESPOND, "tools": FUNCTIONS, "tool_choice": {"type": "function", "name": "get_weather"}}
    whole = tool_client.responses.create(**asked)
    [call] = [item for item in whole.output if item.type == "function_call"]
    assert whole.status == "completed" and call.name == "get_weather" and call.call_id.startswith("call_")
    assert "city" in json.loads(call.arguments)

    events = list(tool_client.responses.create(**asked, stream=True))
    assert [e.type for e in events if e.type.startswith("response.function_call_arguments")] == [
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
    ]
    final = events[-1].response  # type: ignore[union-attr]
    assert events[-1].type == "response.completed"
    assert [(i.name, i.arguments) for i in final.output if i.type == "function_call"] == [
        (call.name, call.arguments)
    ]


def test_responses_take_a_call_and_its_output_back_for_the_next_turn(tool_client):
    turns = [
        *ASK,
        {
            "type": "function_call",
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": '{"city": "Paris"}',
        },
        {"type": "function_call_output", "call_id": "call_1", "output": "18 degrees and sunny"},
    ]
    first = tool_client.responses.create(**{**RESPOND, "tools": FUNCTIONS})
    after = tool_client.responses.create(**{**RESPOND, "input": turns, "tools": FUNCTIONS})
    assert after.status in ("completed", "incomplete")
    assert after.usage is not None and first.usage is not None
    assert after.usage.input_tokens > first.usage.input_tokens + 20
