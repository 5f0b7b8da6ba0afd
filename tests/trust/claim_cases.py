"""Requests whose answers depend on more than their prompt (a grammar, sampling
adjustments, log-probabilities), and the liars that ignore each: shared by
tests/trust/test_claim_liars.py, tests/trust/test_tool_liars.py and bench/claims.py."""

from __future__ import annotations

import random
from contextlib import aclosing

from dinet.client.structured import json_schema_grammar
from dinet.engine import WorkerEngine
from dinet.trust.verify import judge
from dinet.wire.messages import ChatMessage, EndFrame, ErrorFrame, GenerationParams, TokenFrame
from dinet.wire.verify import ScoreRequest, ScoresFrame

LIES = {"ignore-grammar": "grammar", "ignore-penalties": "penalties", "fake-logprobs": "logprobs"}
TOPICS = ["rivers", "cats", "the moon", "bread", "chess", "volcanoes", "music", "trains", "bees", "glass"]
DECODINGS = [(0.0, 1.0), (0.7, 0.9), (1.0, 1.0), (0.8, 0.95)]  # (temperature, top_p)
NAME_AGE = {"name": {"type": "string", "maxLength": 16}, "age": {"type": "integer"}}
COLOUR_OK = {"colour": {"enum": ["red", "green", "blue"]}, "ok": {"type": "boolean"}}
SCHEMAS = [
    {"type": "object", "properties": NAME_AGE, "required": ["name", "age"]},
    {"type": "object", "properties": COLOUR_OK, "required": ["colour", "ok"]},
    {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
]
GRAMMARS = [json_schema_grammar(schema) for schema in SCHEMAS]


def requests(concern: str, n: int, seed: int, greedy: bool = False) -> list[GenerationParams]:
    """`n` requests whose answers depend on `concern`: a grammar, adjustments, or logprobs;
    greedy and sampled in turn, or all greedy."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        temperature, top_p = DECODINGS[0 if greedy else i % len(DECODINGS)]
        topic = rng.choice(TOPICS)
        fields: dict[str, object] = {"temperature": temperature, "top_p": top_p, "seed": rng.randrange(2**31)}
        if concern == "grammar":
            content, fields["grammar"], fields["max_tokens"] = (
                f"Tell me about {topic}.",
                rng.choice(GRAMMARS),
                24,
            )
        elif concern == "penalties":
            content, fields["max_tokens"] = f"Write about {topic}, and repeat its name often.", 20
            fields["frequency_penalty"] = rng.choice((1.0, 1.5, 2.0))
            fields["presence_penalty"] = rng.choice((0.0, 0.5, 1.0))
            fields["repetition_penalty"] = rng.choice((1.0, 1.3))
            fields["min_p"] = rng.choice((0.0, 0.1)) if temperature else 0.0
        else:
            content, fields["logprobs"], fields["max_tokens"] = (
                f"Tell me about {topic}.",
                rng.choice((0, 2)),
                12,
            )
        out.append(GenerationParams(messages=(ChatMessage(role="user", content=content),), **fields))  # type: ignore[arg-type]
    return out


async def answer(engine: WorkerEngine, params: GenerationParams) -> tuple[list[int], list[float | None]]:
    """The tokens one worker answers `params` with, and the log-probability it claims for each."""
    tokens: list[int] = []
    logprobs: list[float | None] = []
    async with aclosing(engine.generate(params)) as frames:
        async for frame in frames:
            if isinstance(frame, TokenFrame):
                tokens.append(frame.token_id)
                logprobs.append(None if frame.logprobs is None else frame.logprobs.logprob)
            elif isinstance(frame, EndFrame):
                return tokens, logprobs
            elif isinstance(frame, ErrorFrame):
                raise RuntimeError(f"{frame.code}: {frame.message}")
    raise RuntimeError("no end frame")


async def lies_told(
    verifier: WorkerEngine, honest: WorkerEngine, liar: WorkerEngine, requests: list[GenerationParams]
) -> int:
    """Asks `honest` and `liar` every request and has `verifier` judge both answers (with
    the log-probabilities claimed, where asked for): asserts that every honest answer
    passes and every liar answer that differs from it is flagged. (A lie that changes
    nothing, where the model kept to the request anyway, is no lie.) Returns how many
    of the liar's answers differed."""
    lied = 0
    for params in requests:
        truth = await answer(honest, params)
        claim = await answer(liar, params)
        for (tokens, logprobs), should_pass in ((truth, True), (claim, truth == claim)):
            scores = await verifier.score(ScoreRequest(params=params, tokens=tuple(tokens)))
            assert isinstance(scores, ScoresFrame)
            claimed = logprobs if params.logprobs is not None else None
            verdict = judge(scores.positions, temperature=params.temperature, top_p=params.top_p,
                            seed=params.seed, claimed_logprobs=claimed)  # fmt: skip
            assert verdict.ok == should_pass, (params, should_pass, verdict)
        lied += truth != claim
    return lied
