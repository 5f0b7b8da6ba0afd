"""WorkerEngine with the real model in real worker processes."""

from __future__ import annotations

import itertools
import logging
import os
import signal
from contextlib import aclosing
from pathlib import Path

import pytest
import trio
from tests.engine._engine_helpers import chat, collect

from dinet.engine import WorkerEngine, _paths, default_model_path
from dinet.engine.llama._llama_cpp import chat_formatter, chat_prompt
from dinet.errors import EngineCrashed, EngineUnavailable, ModelNotFound
from dinet.trust.verify import judge
from dinet.wire.messages import ErrorFrame, GenerationParams, TokenFrame
from dinet.wire.verify import ScoreRequest, ScoresFrame

GREEDY = {"temperature": 0.0, "top_k": 1, "top_p": 1.0, "min_p": 0.0, "repeat_penalty": 1.0}
QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers.",
    "Écris une phrase en français avec des accents.",
]


def in_process_chat(llm, content: str, max_tokens: int, **options) -> dict:
    llm.reset()  # no KV reuse between calls: each answer from a fresh prefill
    messages = [{"role": "user", "content": content}]
    reply = llm.create_chat_completion(messages, max_tokens=max_tokens, **GREEDY, **options)
    return reply


def assert_reaped(pid: int) -> None:
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


async def test_greedy_text_equals_in_process_chat_completion(engine: WorkerEngine, llm) -> None:
    for question in QUESTIONS:
        expected = in_process_chat(llm, question, max_tokens=48)
        run = await collect(engine, chat(question, max_tokens=48))
        assert run.text == expected["choices"][0]["message"]["content"]
        assert run.end.finish_reason == expected["choices"][0]["finish_reason"]
        assert run.end.usage.prompt_tokens == expected["usage"]["prompt_tokens"]
        assert run.end.usage.completion_tokens == expected["usage"]["completion_tokens"]
        assert [f.index for f in run.frames] == list(range(len(run.frames)))
    assert run.end.model_id == engine.info.model_id == "smollm2-135m-instruct"
    assert run.end.ttft_ms > 0 and run.end.tokens_per_s > 0


async def test_raw_prompt_equals_in_process_completion(engine: WorkerEngine, llm) -> None:
    prompt = "The three primary colors are"
    llm.reset()
    expected = llm.create_completion(prompt, max_tokens=24, **GREEDY)
    run = await collect(engine, GenerationParams(prompt=prompt, max_tokens=24))
    assert run.text == expected["choices"][0]["text"]
    assert run.end.usage.prompt_tokens == expected["usage"]["prompt_tokens"]


async def test_stop_string_matches_in_process_and_is_not_emitted(engine: WorkerEngine, llm) -> None:
    question = "Write a haiku about the sea."
    full = (await collect(engine, chat(question, max_tokens=40))).text
    stop = full[12:16]  # a stop string in the middle of the greedy answer
    expected = in_process_chat(llm, question, max_tokens=40, stop=[stop])
    run = await collect(engine, chat(question, max_tokens=40, stop=(stop,)))
    assert run.text == full[: full.index(stop)] == expected["choices"][0]["message"]["content"]
    assert run.end.finish_reason == "stop"


async def test_max_tokens_bounds_the_completion_including_prefix(engine: WorkerEngine) -> None:
    run = await collect(engine, chat("Tell me a long story.", max_tokens=7))
    assert run.end.finish_reason == "length"
    assert len(run.frames) == run.end.usage.completion_tokens == 7
    resumed = await collect(
        engine, chat("Tell me a long story.", max_tokens=7, prefix_tokens=tuple(run.tokens[:5]))
    )
    assert [f.index for f in resumed.frames] == [5, 6]
    assert resumed.end.usage.completion_tokens == 7


async def test_a_resumed_answer_goes_on_as_llama_cpps_own_generate_from_its_prefix(
    engine: WorkerEngine, llm
) -> None:
    """A peer taking over mid-answer prefills the prompt and the tokens already sent as
    one batch, then decodes: greedy, it gives llama-cpp-python's own greedy tokens after
    that same prefix."""
    params = chat("Describe a busy train station.", max_tokens=30)
    whole = await collect(engine, params)
    k = 9
    resumed = await collect(engine, params.model_copy(update={"prefix_tokens": tuple(whole.tokens[:k])}))
    assert [f.index for f in resumed.frames] == list(range(k, 30))
    assert resumed.end.usage.completion_tokens == 30
    prompt, _ = chat_prompt(llm, chat_formatter(llm), params.messages)
    llm.reset()
    expected = list(itertools.islice(llm.generate(prompt + whole.tokens[:k], temp=0.0, top_k=1), 30 - k))
    assert resumed.tokens == expected


async def test_a_resumed_seeded_answer_is_reproducible_and_verifies(engine: WorkerEngine) -> None:
    params = chat("Describe a busy train station.", max_tokens=24, temperature=0.9, seed=7)
    whole = await collect(engine, params)
    resume = params.model_copy(update={"prefix_tokens": tuple(whole.tokens[:9])})
    resumed = await collect(engine, resume)
    assert (await collect(engine, resume)).tokens == resumed.tokens
    joined = tuple(whole.tokens[:9] + resumed.tokens)
    scores = await engine.score(ScoreRequest(params=params, tokens=joined))
    assert isinstance(scores, ScoresFrame)
    assert judge(scores.positions, temperature=0.9, top_p=1.0, seed=7).ok


async def test_resume_inside_a_multibyte_character(engine: WorkerEngine) -> None:
    params = chat("Translate 'good morning' to Japanese and Chinese.", max_tokens=16)
    whole = await collect(engine, params)
    split = [f.index for f in whole.frames if f.text == "" and f.index > 0]
    assert split, "expected a token that ends inside a UTF-8 character"
    k = split[0] + 1  # the prefix ends with the first bytes of a character
    resumed = await collect(engine, params.model_copy(update={"prefix_tokens": tuple(whole.tokens[:k])}))
    assert resumed.frames[0].text != ""  # it completes the character begun in the prefix
    assert "\ufffd" not in "".join(f.text for f in whole.frames[:k]) + resumed.text


async def test_seeded_sampling_is_reproducible(engine: WorkerEngine) -> None:
    def params(seed: int) -> GenerationParams:
        return chat("Invent a name for a cat.", max_tokens=24, temperature=1.0, seed=seed)

    first = await collect(engine, params(1))
    assert (await collect(engine, params(1))).tokens == first.tokens
    others = [(await collect(engine, params(seed))).tokens for seed in (2, 3, 4)]
    assert any(tokens != first.tokens for tokens in others)


async def test_bad_requests_get_an_error_frame_and_the_worker_keeps_serving(
    engine: WorkerEngine,
) -> None:
    pid = engine.pid
    too_long = await collect(engine, GenerationParams(prompt="word " * 2100, max_tokens=4))
    assert isinstance(too_long.last, ErrorFrame) and too_long.last.code == "bad_request"
    assert "context" in too_long.last.message
    for bad_id in (10**6, -1):
        bad_prefix = await collect(engine, chat("Hi", prefix_tokens=(bad_id,)))
        assert isinstance(bad_prefix.last, ErrorFrame) and bad_prefix.last.code == "bad_request"
    ok = await collect(engine, chat("Hi", max_tokens=3))
    assert len(ok.frames) == 3
    assert engine.pid == pid and engine.restarts == 0


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGSEGV])
async def test_worker_death_mid_stream_raises_and_restarts(engine: WorkerEngine, signum: int) -> None:
    old_pid = engine.pid
    assert old_pid is not None
    with pytest.raises(EngineCrashed, match=signal.Signals(signum).name):
        async for reply in engine.generate(chat("Tell me a long story.", max_tokens=200)):
            if isinstance(reply, TokenFrame) and reply.index == 2:
                os.kill(old_pid, signum)
    assert engine.restarts == 1
    assert_reaped(old_pid)
    run = await collect(engine, chat("What is the capital of France?", max_tokens=8))
    assert len(run.frames) == 8
    assert engine.pid != old_pid


async def test_an_abandoned_stream_is_cancelled_not_waited_for(
    engine: WorkerEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="dinet.engine.llama.worker_client")
    pid = engine.pid
    async with aclosing(engine.generate(chat("Tell me a long story.", max_tokens=2000))) as stream:
        async for reply in stream:
            if isinstance(reply, TokenFrame) and reply.index == 1:
                break
    skipped = [r.args[1] for r in caplog.records if r.msg.startswith("abandoned request")]
    assert len(skipped) == 1 and skipped[0] < 50  # cancelled, not run to 2000 tokens
    run = await collect(engine, chat("What is the capital of France?", max_tokens=4))
    assert len(run.frames) == 4
    assert engine.pid == pid and engine.restarts == 0


async def test_a_memory_limit_too_small_fails_start_clearly(model_path: Path) -> None:
    with trio.fail_after(60):
        with pytest.raises(EngineUnavailable, match="memory limit of 100 MB"):
            async with WorkerEngine(model_path, threads=2, memory_mb=100):
                pass


async def test_a_missing_model_fails_start_clearly(tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable, match="no model file"):
        async with WorkerEngine(tmp_path / "absent.gguf", threads=1):
            pass


async def test_close_reaps_the_worker(model_path: Path) -> None:
    async with WorkerEngine(model_path, threads=2) as engine:
        pid = engine.pid
        assert pid is not None and engine.info.n_layers == 30
    assert_reaped(pid)
    with pytest.raises(EngineUnavailable):
        await collect(engine, chat("Hi", max_tokens=2))


def test_default_model_path_finds_the_packaged_gguf(monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_model_path().name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    monkeypatch.setattr(_paths, "DEFAULT_MODEL_DIST", "no-such-dinet-model-package")
    with pytest.raises(ModelNotFound, match="pip install"):
        default_model_path()
