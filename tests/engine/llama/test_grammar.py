"""Structured outputs in the worker: every token keeps to the request's grammar, a resumed
answer continues as the first would have, and verification scores under the grammar."""

from __future__ import annotations

import json
from pathlib import Path

from tests.engine._engine_helpers import chat, collect

from dinet.client.structured import json_object_grammar, json_schema_grammar
from dinet.engine import WorkerEngine
from dinet.trust.verify import judge
from dinet.wire.messages import ErrorFrame
from dinet.wire.verify import ScoreRequest, ScoresFrame

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
ASK = "Describe a person as JSON with their name and age."


async def test_answers_keep_to_the_schema_and_resume_and_verify_under_it(model_path: Path, tmp_path: Path):
    grammar = json_schema_grammar(PERSON)
    greedy = chat(ASK, max_tokens=40, grammar=grammar)
    sampled = chat(ASK, max_tokens=40, grammar=grammar, temperature=1.0, seed=11)
    async with WorkerEngine(model_path, threads=1, score_cache=tmp_path) as engine:
        plain = await collect(engine, chat(ASK, max_tokens=40))
        for params in (greedy, sampled):
            run = await collect(engine, params)
            assert run.end.finish_reason == "stop", run.text  # the grammar ends, then only the end is allowed
            person = json.loads(run.text)
            assert set(person) == {"name", "age"} and isinstance(person["age"], int)

            resumed = await collect(
                engine, params.model_copy(update={"prefix_tokens": tuple(run.tokens[:5])})
            )
            # A peer taking over after 5 tokens keeps to the schema too, and both verify.
            taken_over = "".join(f.text for f in run.frames[:5]) + resumed.text
            assert set(json.loads(taken_over)) == {"name", "age"}
            for tokens in (run.tokens, run.tokens[:5] + resumed.tokens):
                scores = await engine.score(ScoreRequest(params=params, tokens=tuple(tokens)))
                assert isinstance(scores, ScoresFrame) and all(p.allowed for p in scores.positions)
                assert judge(scores.positions, temperature=params.temperature, top_p=1.0, seed=params.seed).ok

        # The model's own free answer breaks the grammar at once: the verifier says so.
        assert not plain.text.lstrip().startswith("{")
        scores = await engine.score(ScoreRequest(params=greedy, tokens=tuple(plain.tokens)))
        assert isinstance(scores, ScoresFrame) and not scores.positions[0].allowed
        verdict = judge(scores.positions, temperature=0.0, top_p=1.0, seed=0)
        assert not verdict.ok and verdict.bad_positions == tuple(range(len(plain.tokens)))


async def test_json_mode_gives_an_object_and_a_bad_grammar_is_refused(model_path: Path):
    async with WorkerEngine(model_path, threads=1) as engine:
        run = await collect(engine, chat("List three colours.", max_tokens=48, grammar=json_object_grammar()))
        assert run.text.lstrip().startswith("{")
        if run.end.finish_reason == "stop":
            assert isinstance(json.loads(run.text), dict)
        refused = await collect(engine, chat("Hi", grammar="root ::= ( unclosed"))
        assert isinstance(refused.last, ErrorFrame) and refused.last.code == "bad_request"
        assert "grammar" in refused.last.message
        assert (await collect(engine, chat("Hi", max_tokens=4))).end.usage.completion_tokens > 0
