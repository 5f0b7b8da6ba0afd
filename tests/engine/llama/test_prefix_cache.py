"""The prefix cache: a prompt that begins like an earlier one reuses its keys and values,
and the answer's tokens are exactly those of a full prefill."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import llama_cpp
import pytest
from tests.engine._engine_helpers import collect

from dinet.engine import WorkerEngine
from dinet.engine.llama._generator import Generator
from dinet.engine.llama._llama_cpp import load_llama
from dinet.engine.llama._prefix_cache import common_prefix
from dinet.wire.messages import ChatMessage, GenerationParams, TokenFrame

SYSTEM = (
    "You are a patient assistant for a community garden. Answer in one or two short sentences, "
    "name plants by their common names, and never recommend pesticides."
)
MAX_TOKENS = 12


def turn(history: list[ChatMessage], user: str, **options: object) -> GenerationParams:
    return GenerationParams(
        messages=(
            ChatMessage(role="system", content=SYSTEM),
            *history,
            ChatMessage(role="user", content=user),
        ),
        max_tokens=MAX_TOKENS,
        **options,
    )


def run(generator: Generator, params: GenerationParams) -> tuple[list[int], str]:
    frames: list[TokenFrame] = []
    generator.run(params, 0.0, lambda f: frames.append(f) if isinstance(f, TokenFrame) else None)  # type: ignore[func-returns-value]
    return [f.token_id for f in frames], "".join(f.text for f in frames)


@pytest.fixture(scope="module")
def llms(model_path: Path) -> Iterator[tuple[llama_cpp.Llama, llama_cpp.Llama]]:
    """Two contexts of the same model on one thread each: one caches, one never does."""
    cached, plain = load_llama(model_path, threads=1), load_llama(model_path, threads=1)
    yield cached, plain
    cached.close()
    plain.close()


def test_two_interleaved_chats_reuse_their_prefixes_and_answer_as_a_full_prefill_does(llms):
    cached = Generator(llms[0], "m", prefix_cache_bytes=64 * 1024 * 1024)
    plain = Generator(llms[1], "m")
    chats: dict[str, list[ChatMessage]] = {"tomatoes": [], "roses": []}
    questions = {
        "tomatoes": ["When do I plant tomatoes?", "And how deep?", "How often should I water them?"],
        "roses": ["Why are my rose leaves yellow?", "What should I do about it?", "Thanks! Anything else?"],
    }
    reused: list[tuple[str, int, int]] = []
    for round_ in range(3):
        for name, history in chats.items():  # the two chats take turns: each one evicts the other
            options = {"temperature": 1.0, "seed": 7} if name == "roses" else {}
            params = turn(history, questions[name][round_], **options)
            tokens, text = run(cached, params)
            assert (tokens, text) == run(plain, params), (name, round_)
            prompt, _ = cached.prompt_tokens(params)
            reused.append((name, cached.prefix_cache.reused, len(prompt)))
            history += [ChatMessage(role="user", content=questions[name][round_]),
                        ChatMessage(role="assistant", content=text)]  # fmt: skip
    print("reused of each prompt:", reused)
    # Round 0: the system prompt is shared, so the second chat starts from it.
    assert reused[0][1] == 0 and reused[1][1] > 20
    # Later rounds: all of the chat's previous prompt comes back from the saved state,
    # though the other chat used the context in between (its answer is evaluated again).
    for (name, hit, length), (_, _, before_length) in zip(reused[2:], reused, strict=False):
        assert hit >= before_length, (name, hit, before_length, length)


def test_a_repeated_prompt_evaluates_only_its_last_two_tokens(llms):
    cached = Generator(llms[0], "m", prefix_cache_bytes=64 * 1024 * 1024)
    params = turn([], "Name a herb that grows in shade.")
    first = run(cached, params)
    prompt, _ = cached.prompt_tokens(params)
    assert run(cached, params) == first
    assert cached.prefix_cache.reused == len(prompt) - 2


def test_with_the_cache_off_nothing_is_reused(llms):
    off = Generator(llms[0], "m", prefix_cache_bytes=0)
    params = turn([], "Name a herb that grows in shade.")
    assert run(off, params) == run(off, params)
    assert off.prefix_cache.reused == 0


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([1, 2], [1, 2, 3]) == 2


async def test_the_worker_reuses_a_chats_prefix_and_verification_still_passes(
    model_path: Path, tmp_path: Path
):
    """Through the worker process, as a node runs it: a second turn gives the same tokens
    with the cache as without, and its answer re-scores as honest."""
    from dinet.trust.verify import judge
    from dinet.wire.verify import ScoreRequest, ScoresFrame

    first = turn([], "When do I plant tomatoes?")
    answers = []
    for cache_mb in (16, 0):
        async with WorkerEngine(
            model_path, threads=1, prefix_cache_mb=cache_mb, score_cache=tmp_path
        ) as engine:
            one = await collect(engine, first)
            history = [ChatMessage(role="user", content="When do I plant tomatoes?"),
                       ChatMessage(role="assistant", content=one.text)]  # fmt: skip
            second = turn(history, "And how deep?")
            two = await collect(engine, second)
            answers.append((one.tokens, two.tokens))
            scores = await engine.score(ScoreRequest(params=second, tokens=tuple(two.tokens)))
            assert isinstance(scores, ScoresFrame)
            assert judge(scores.positions, temperature=0.0, top_p=1.0, seed=None).ok
    assert answers[0] == answers[1]
