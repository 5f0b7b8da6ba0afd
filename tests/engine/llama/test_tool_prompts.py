"""Tool support read from a GGUF's chat template, and tools, calls and results rendered by it."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.tool_model import TOOL_TEMPLATE, make_tool_model

from dinet.engine._generate import BadRequest
from dinet.engine.llama._generator import Generator
from dinet.engine.llama._llama_cpp import chat_formatter, chat_prompt, load_llama, template_tools
from dinet.wire.messages import ChatMessage, GenerationParams, Tool, ToolCall

WEATHER = Tool(
    name="get_weather",
    description="The weather now in a city",
    parameters='{"type": "object", "properties": {"city": {"type": "string"}}}',
)
TURNS = (
    ChatMessage(role="user", content="Weather in Paris?"),
    ChatMessage(
        role="assistant",
        content="",
        tool_calls=(ToolCall(id="c1", name="get_weather", arguments='{"city": "Paris"}'),),
    ),
    ChatMessage(role="tool", content="18 degrees", tool_call_id="c1"),
)


@pytest.fixture(scope="module")
def tool_llm(tmp_path_factory):
    llm = load_llama(make_tool_model(tmp_path_factory.mktemp("tool-model")), threads=1, n_ctx=512)
    yield llm
    llm.close()


def test_a_template_declares_tools_by_reading_them_and_calling_in_the_hermes_format(model_path: Path):
    plain = load_llama(model_path, threads=1, n_ctx=64)
    try:
        assert template_tools(plain.metadata["tokenizer.chat_template"]) is False  # SmolLM2: ChatML, no tools
    finally:
        plain.close()
    assert template_tools(None) is False  # no template at all (Gemma 3 270M)
    assert template_tools(TOOL_TEMPLATE) is True
    # Reads `tools` but calls in another format: reading its calls back would be a guess.
    assert (
        template_tools("{% for t in tools %}{{ t | tojson }}{% endfor %}{{ messages[0].content }}") is False
    )
    assert template_tools("{{ '<tool_call>' }}{% if tools %}") is False  # does not parse


def test_tools_calls_and_results_are_rendered_by_the_template(tool_llm):
    tokens, stops = chat_prompt(tool_llm, chat_formatter(tool_llm), TURNS, (WEATHER,))
    text = tool_llm.detokenize(tokens, special=True).decode()
    assert '"name": "get_weather", "description": "The weather now in a city"' in text
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    assert "<tool_response>\n18 degrees\n</tool_response>" in text
    assert text.endswith("<|im_start|>assistant\n") and stops == ("<|im_end|>",)
    without, _ = chat_prompt(tool_llm, chat_formatter(tool_llm), TURNS[:1])
    assert "<tools>" not in tool_llm.detokenize(without, special=True).decode()


def test_a_model_without_tool_support_refuses_tools_calls_and_results(model_path: Path):
    llm = load_llama(model_path, threads=1, n_ctx=256)
    try:
        generator = Generator(llm, "smollm2-135m-instruct")
        for params in (
            GenerationParams(messages=TURNS[:1], tools=(WEATHER,)),
            GenerationParams(messages=TURNS),
        ):
            with pytest.raises(BadRequest, match="declares no tool support"):
                generator.prompt_tokens(params)
        generator.prompt_tokens(GenerationParams(messages=TURNS[:1]))  # plain chat still fine
    finally:
        llm.close()
