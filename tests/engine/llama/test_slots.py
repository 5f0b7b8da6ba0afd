"""Continuous batching: several requests decoded together in one llama.cpp context.

In process (`StreamServer`, driven step by step, so the joins and leaves are exact) and
through real worker processes (`WorkerEngine(slots=N)`): answers equal the one-at-a-time
ones, verify, end on their own, can be cancelled or refused without touching the
others, and a worker that dies takes every stream with it, counted once.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import aclosing
from pathlib import Path

import llama_cpp
import pytest
import trio
from tests.engine._engine_helpers import chat, collect

from dinet.engine import WorkerEngine
from dinet.engine.llama._generator import Generator
from dinet.engine.llama._llama_cpp import load_llama
from dinet.engine.llama._slots import StreamServer
from dinet.engine.worker_protocol import CANCEL_PAYLOAD
from dinet.errors import EngineCrashed, MalformedMessage
from dinet.trust.verify import judge
from dinet.wire.messages import ChatMessage, EndFrame, ErrorFrame, GenerationParams, TokenFrame, encode
from dinet.wire.verify import ScoreRequest, ScoresFrame

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers.",
    "Écris une phrase en français avec des accents.",
    "Why is the sky blue?",
    "Tell me a short story about a cat.",
]
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def llms(model_path: Path) -> Iterator[tuple[llama_cpp.Llama, llama_cpp.Llama]]:
    """One model for the batched server, one for the one-at-a-time answers."""
    batched, plain = load_llama(model_path, threads=1), load_llama(model_path, threads=1)
    yield batched, plain
    batched.close()
    plain.close()


def alone(generator: Generator, params: GenerationParams) -> list[TokenFrame | EndFrame | ErrorFrame]:
    frames: list[TokenFrame | EndFrame | ErrorFrame] = []
    generator.run(params, 0.0, frames.append)  # type: ignore[arg-type]
    return frames


class Driver:
    """A StreamServer and what it emitted, per stream."""

    def __init__(self, llm: llama_cpp.Llama, slots: int) -> None:
        self.replies: dict[int, list[TokenFrame | EndFrame | ErrorFrame]] = {}
        self.server = StreamServer(Generator(llm, "m"), slots, self._emit)

    def _emit(self, sid: int, message: object) -> None:
        self.replies.setdefault(sid, []).append(message)  # type: ignore[arg-type]

    def send(self, sid: int, body: bytes) -> None:
        self.server.take(bytes((sid,)) + body)

    def ended(self, sid: int) -> bool:
        frames = self.replies.get(sid, [])
        return bool(frames) and not isinstance(frames[-1], TokenFrame)

    def tokens(self, sid: int) -> list[int]:
        return [f.token_id for f in self.replies[sid] if isinstance(f, TokenFrame)]


def test_requests_that_join_and_leave_between_steps_answer_as_they_would_alone(llms) -> None:
    plain = Generator(llms[1], "m")
    requests = [chat(q, max_tokens=MAX_TOKENS) for q in QUESTIONS]
    requests += [chat(q, max_tokens=MAX_TOKENS, temperature=0.9, seed=11) for q in QUESTIONS[:2]]
    driver = Driver(llms[0], slots=4)
    waiting = list(enumerate(requests))
    steps = 0
    most = 0
    while waiting or driver.server.running:
        # Two join at once, then one more every third step while a sequence is free.
        while waiting and len(driver.server._streams) < 4 and (steps == 0 or steps % 3 == 0):
            sid, params = waiting.pop(0)
            driver.send(sid, encode(params))
            if steps == 0 and sid == 1:
                break
        most = max(most, len(driver.server._streams))
        driver.server.step()
        steps += 1
    driver.server.close()
    assert most == 4  # the batches really held four requests
    differ = []
    for sid, params in enumerate(requests):
        expected = alone(plain, params)
        assert isinstance(driver.replies[sid][-1], EndFrame), driver.replies[sid][-1]
        if driver.tokens(sid) != [f.token_id for f in expected if isinstance(f, TokenFrame)]:
            differ.append(sid)
        # Whatever the batch gave, it is an answer the model stands behind.
        scores = plain.score(ScoreRequest(params=params, tokens=tuple(driver.tokens(sid))))
        options = {"temperature": params.temperature, "top_p": params.top_p, "seed": params.seed}
        assert judge(scores.positions, **options).ok
    # llama.cpp's batched numbers differ from a lone sequence's in the last bits, which
    # can flip a near tie (verification allows for it, above); most answers stay the same.
    print("answers that differ from the one-at-a-time ones:", differ)
    assert len(differ) <= len(requests) // 2, differ


def test_a_cancel_or_a_bad_request_ends_only_its_own_stream(llms) -> None:
    driver = Driver(llms[0], slots=3)
    driver.send(0, encode(chat(QUESTIONS[0], max_tokens=MAX_TOKENS)))
    driver.send(1, encode(chat(QUESTIONS[5], max_tokens=MAX_TOKENS)))
    driver.send(2, b'{"prompt":"hi","max_tokens":-3}')  # refused at once, nothing decoded
    assert isinstance(driver.replies[2][-1], ErrorFrame) and driver.replies[2][-1].code == "bad_request"
    for _ in range(4):
        driver.server.step()
    driver.send(1, CANCEL_PAYLOAD)
    driver.server.step()
    assert driver.ended(1) and isinstance(driver.replies[1][-1], EndFrame)
    cancelled_at = len(driver.tokens(1))
    assert cancelled_at < MAX_TOKENS
    driver.send(2, encode(chat(QUESTIONS[2], max_tokens=MAX_TOKENS)))  # the freed streams serve again
    while driver.server.running:
        driver.server.step()
    assert len(driver.tokens(1)) == cancelled_at
    plain = Generator(llms[1], "m")
    for sid, question in ((0, QUESTIONS[0]), (2, QUESTIONS[2])):
        expected = alone(plain, chat(question, max_tokens=MAX_TOKENS))
        assert driver.tokens(sid) == [f.token_id for f in expected if isinstance(f, TokenFrame)]
    with pytest.raises(MalformedMessage):
        driver.server.take(b"")  # no stream byte: the node's own bug, so the worker stops
    driver.send(0, encode(chat(QUESTIONS[0], max_tokens=MAX_TOKENS)))
    with pytest.raises(MalformedMessage):
        driver.send(0, encode(chat(QUESTIONS[1])))  # a stream runs one request at a time
    driver.server.close()


def test_a_chats_next_turn_reuses_the_prompt_its_sequence_holds(llms) -> None:
    system = ChatMessage(role="system", content="You are a gardener. " * 20)
    first = GenerationParams(messages=(system, ChatMessage(role="user", content="Hello!")), max_tokens=8)
    driver = Driver(llms[0], slots=2)
    driver.send(0, encode(first))
    while driver.server.running:
        driver.server.step()
    answer = "".join(f.text for f in driver.replies[0] if isinstance(f, TokenFrame))
    history = (ChatMessage(role="user", content="Hello!"), ChatMessage(role="assistant", content=answer))
    second = GenerationParams(
        messages=(system, *history, ChatMessage(role="user", content="What grows in shade?")), max_tokens=8
    )
    context = driver.server._context
    held = len(context.prompts[0])
    driver.send(1, encode(second))  # another stream byte: the sequence is chosen by its prompt
    stream = driver.server._streams[1]
    assert stream.model.seq == 0
    prompt_len = len(Generator(llms[1], "m").prompt_tokens(second)[0])
    assert len(stream.pending) <= prompt_len - held + 2  # only what is new, and the last two again
    while driver.server.running:
        driver.server.step()
    expected = alone(Generator(llms[1], "m"), second)
    assert driver.tokens(1) == [f.token_id for f in expected if isinstance(f, TokenFrame)]
    driver.server.close()


@pytest.fixture
async def slotted(model_path: Path, tmp_path: Path) -> WorkerEngine:
    engine = WorkerEngine(model_path, threads=1, slots=3, sandbox=False, log_path=tmp_path / "worker.log")
    async with engine:
        yield engine


async def test_a_worker_with_slots_serves_concurrent_streams_and_scores(slotted: WorkerEngine, llms) -> None:
    plain = Generator(llms[1], "m")
    results: dict[int, list[int]] = {}
    ends: dict[int, EndFrame] = {}

    async def one(i: int) -> None:
        run = await collect(slotted, chat(QUESTIONS[i], max_tokens=MAX_TOKENS))
        results[i], ends[i] = run.tokens, run.end  # `end` fails unless it ended well

    async with trio.open_nursery() as nursery:
        for i in range(5):  # more than its slots: two wait for a free one
            nursery.start_soon(one, i)
    differ = []
    for i in range(5):
        params = chat(QUESTIONS[i], max_tokens=MAX_TOKENS)
        expected = alone(plain, params)
        if results[i] != [f.token_id for f in expected if isinstance(f, TokenFrame)]:
            differ.append(i)  # a near tie flipped by the batch (see the first test)
        scores = await slotted.score(ScoreRequest(params=params, tokens=tuple(results[i])))
        assert isinstance(scores, ScoresFrame)
        assert judge(scores.positions, temperature=0.0, top_p=1.0, seed=0).ok, i
    print("answers that differ from the one-at-a-time ones:", differ)
    assert len(differ) <= 2, differ

    # A stream left early is cancelled in the worker; the others are not disturbed.
    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, 0)
        async with aclosing(slotted.generate(chat(QUESTIONS[5], max_tokens=200))) as stream:
            async for frame in stream:
                if isinstance(frame, TokenFrame) and frame.index == 2:
                    break
    assert ends[0].finish_reason in ("stop", "length")
    params = chat(QUESTIONS[0], max_tokens=MAX_TOKENS)
    scores = await slotted.score(ScoreRequest(params=params, tokens=tuple(results[0])))
    assert isinstance(scores, ScoresFrame)
    assert judge(scores.positions, temperature=0.0, top_p=1.0, seed=0).ok


async def test_a_worker_killed_mid_answer_fails_every_stream_and_is_replaced_once(
    slotted: WorkerEngine,
) -> None:
    crashed: list[str] = []
    first_pid = slotted.pid
    assert first_pid is not None
    started = trio.Event()
    seen = 0

    async def one(i: int) -> None:
        nonlocal seen
        try:
            async with aclosing(slotted.generate(chat(QUESTIONS[i], max_tokens=400))) as stream:
                async for frame in stream:
                    if isinstance(frame, TokenFrame) and frame.index == 1:
                        seen += 1
                        if seen == 3:
                            started.set()
        except EngineCrashed as exc:
            crashed.append(str(exc))

    async with trio.open_nursery() as nursery:
        for i in range(3):
            nursery.start_soon(one, i + 3)
        await started.wait()
        os.kill(first_pid, signal.SIGKILL)
    assert len(crashed) == 3
    assert slotted.restarts == 1 and slotted.failed is None
    run = await collect(slotted, chat(QUESTIONS[0], max_tokens=8))  # the replacement serves
    assert run.end.finish_reason in ("stop", "length")
    assert slotted.pid != first_pid
