"""A peer that fakes a tool call is caught by verification, as any other answer is: the
tool definitions travel in the request, so the verifier renders the same prompt and
re-scores the call's tokens (with the forced-call grammar, where the request has one).
Engine workers on the tool model (tests/tool_model.py), no network."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tests.tool_model import make_tool_model
from tests.trust.claim_cases import lies_told

from dinet.client.structured import tool_call_grammar
from dinet.engine import WorkerEngine
from dinet.engine.testing.liar import ALLOW_ENV
from dinet.wire.messages import ChatMessage, GenerationParams, Tool

WEATHER = Tool(
    name="get_weather",
    description="The weather now in a city",
    parameters=json.dumps(
        {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    ),
)
TIME = Tool(name="get_time", description="The time now in a city", parameters=json.dumps({"type": "object"}))
CITIES = ["Paris", "Lagos", "Osaka", "Lima"]


def tool_requests(forced: bool, temperature: float) -> list[GenerationParams]:
    """Requests offering two tools; `forced`: a call is required (the forced-call grammar)."""
    return [
        GenerationParams(
            messages=(ChatMessage(role="user", content=f"What is the weather in {city}?"),),
            tools=(WEATHER, TIME),
            grammar=tool_call_grammar([WEATHER, TIME]) if forced else None,
            max_tokens=32,
            temperature=temperature,
            seed=11 + i,
        )
        for i, city in enumerate(CITIES)
    ]


@pytest.fixture
def liars_allowed(monkeypatch):
    monkeypatch.setitem(os.environ, ALLOW_ENV, "1")


@pytest.fixture(scope="module")
def tool_model(tmp_path_factory) -> tuple[Path, Path]:
    """The tool model, and a folder for the verifier's scoring copy: both made once."""
    root = tmp_path_factory.mktemp("tool-liars")
    return make_tool_model(root / "model"), root / "scoring"


# A one-token swap in a greedy call (another city, a broken name) and a call that ignores
# the forced-call grammar, sampled. (A swap in a sampled answer is caught only
# statistically, as in tests/trust/test_liars.py: a swapped token can land where the
# verifier's own draw would.)
CASES = {
    "corrupt:1": [
        *tool_requests(forced=True, temperature=0.0)[:3],
        *tool_requests(forced=False, temperature=0.0)[:2],
    ],
    "ignore-grammar": tool_requests(forced=True, temperature=0.8)[:3],
}


@pytest.mark.parametrize("lie", list(CASES))
async def test_a_faked_tool_call_is_caught_and_an_honest_one_passes(lie, liars_allowed, tool_model):
    model, scoring = tool_model
    async with (
        WorkerEngine(model, threads=1, score_cache=scoring) as verifier,
        WorkerEngine(model, threads=1) as honest,
        WorkerEngine(model, threads=1, liar=lie) as liar,
    ):
        lied = await lies_told(verifier, honest, liar, CASES[lie])
    assert lied >= len(CASES[lie]) // 2, f"the {lie} liar told only {lied} lies in {len(CASES[lie])} answers"
