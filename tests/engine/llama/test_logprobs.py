"""Log-probabilities in the worker: of the distribution the sampler chose from, in every
token frame of a request that asks, and checked by a verifier like the tokens."""

from __future__ import annotations

import math
from pathlib import Path

from tests.engine._engine_helpers import chat, collect

from dinet.client.structured import json_object_grammar
from dinet.engine import WorkerEngine
from dinet.trust.verify import judge
from dinet.wire.verify import ScoreRequest, ScoresFrame

ASK = "Name three colours."


async def test_logprobs_are_the_samplers_and_a_verifier_agrees(model_path: Path, tmp_path: Path):
    greedy = chat(ASK, max_tokens=12, logprobs=3)
    sampled = chat(ASK, max_tokens=12, logprobs=0, temperature=1.0, seed=2, presence_penalty=1.0)
    async with WorkerEngine(model_path, threads=1, score_cache=tmp_path) as engine:
        run = await collect(engine, greedy)
        assert all(f.logprobs is not None for f in run.frames)
        pieces = b"".join(bytes.fromhex(f.logprobs.piece) for f in run.frames if f.logprobs)
        assert pieces.decode(errors="ignore") == run.text
        for frame in run.frames:
            top = frame.logprobs.top
            assert len(top) == 3 and top[0].token_id == frame.token_id  # greedy takes the best
            assert [c.logprob for c in top] == sorted((c.logprob for c in top), reverse=True)
            assert top[0].logprob == frame.logprobs.logprob and sum(math.exp(c.logprob) for c in top) <= 1.0

        for params in (greedy, sampled):
            run = await collect(engine, params)
            claimed = [f.logprobs.logprob for f in run.frames]
            scores = await engine.score(ScoreRequest(params=params, tokens=tuple(run.tokens)))
            assert isinstance(scores, ScoresFrame)
            gaps = [abs(c - p.logprob) for c, p in zip(claimed, scores.positions, strict=True)]
            print(f"honest logprob gaps at temperature {params.temperature}: max {max(gaps):.4f}")
            verdict = judge(scores.positions, temperature=params.temperature, top_p=1.0, seed=params.seed,
                            claimed_logprobs=claimed)  # fmt: skip
            assert verdict.ok, (verdict, gaps)
            forged = [c + 1.0 if i == 3 else c for i, c in enumerate(claimed)]
            caught = judge(scores.positions, temperature=params.temperature, top_p=1.0, seed=params.seed,
                           claimed_logprobs=forged)  # fmt: skip
            assert not caught.ok and caught.bad_positions == (3,)


async def test_under_a_grammar_the_logprobs_are_of_the_tokens_it_allows(model_path: Path, tmp_path: Path):
    free = chat(ASK, max_tokens=1)
    async with WorkerEngine(model_path, threads=1, score_cache=tmp_path) as engine:
        kept = await collect(engine, chat(ASK, max_tokens=1, logprobs=5, grammar=json_object_grammar()))
        unmasked = await engine.score(ScoreRequest(params=free, tokens=tuple(kept.tokens)))
    first = kept.frames[0].logprobs
    assert all(bytes.fromhex(c.piece).lstrip().startswith(b"{") for c in first.top)
    # The refused tokens' weight goes to the allowed ones: the object's start is far likelier.
    assert isinstance(unmasked, ScoresFrame) and first.logprob > unmasked.positions[0].logprob + 1.0
