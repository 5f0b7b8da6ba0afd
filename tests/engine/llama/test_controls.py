"""Sampling controls in the worker: they change the answer as asked, a resumed answer
keeps to them, and verification scores under them (a peer that ignores a penalty is
caught)."""

from __future__ import annotations

from pathlib import Path

from tests.engine._engine_helpers import chat, collect

from dinet.engine import WorkerEngine
from dinet.trust.verify import judge
from dinet.wire.verify import ScoreRequest, ScoresFrame

ASK = "Write the word cat five times."


async def test_controls_change_the_answer_resume_and_verify(model_path: Path, tmp_path: Path):
    plain = chat(ASK, max_tokens=16)
    penalised = chat(ASK, max_tokens=16, frequency_penalty=2.0, presence_penalty=1.0, repetition_penalty=1.3)
    sampled = chat(ASK, max_tokens=16, temperature=0.8, seed=9, min_p=0.05, frequency_penalty=1.0)
    async with WorkerEngine(model_path, threads=1, score_cache=tmp_path) as engine:
        free = await collect(engine, plain)
        held = await collect(engine, penalised)
        assert held.tokens != free.tokens
        assert max(held.tokens.count(t) for t in held.tokens) < max(free.tokens.count(t) for t in free.tokens)

        # A bias of +100 on one token makes it the greedy choice at every position.
        forced = free.tokens[0] + 1
        biased = await collect(engine, chat(ASK, max_tokens=4, logit_bias=((forced, 100.0),)))
        assert biased.tokens == [forced] * 4

        for params in (penalised, sampled):
            run = await collect(engine, params)
            resumed = await collect(
                engine, params.model_copy(update={"prefix_tokens": tuple(run.tokens[:6])})
            )
            assert resumed.frames[0].index == 6
            # The answer, and the one a peer taking over after 6 tokens gives, both verify.
            for tokens in (run.tokens, run.tokens[:6] + resumed.tokens):
                scores = await engine.score(ScoreRequest(params=params, tokens=tuple(tokens)))
                assert isinstance(scores, ScoresFrame)
                assert judge(scores.positions, temperature=params.temperature, top_p=1.0, seed=params.seed).ok

        # A peer that ignored the penalties claims the free answer: it fails under them.
        scores = await engine.score(ScoreRequest(params=penalised, tokens=tuple(free.tokens)))
        assert isinstance(scores, ScoresFrame)
        assert not judge(scores.positions, temperature=0.0, top_p=1.0, seed=0).ok
