"""The generation loop of every engine: prompt, prefill, choose, detokenize, stop.

`run_generation` drives any `Model`: llama-cpp-python's `Llama` in the worker
(`dinet.engine.llama._generator`) and the torch layer-range engine
(`dinet.engine.torch._generator`). Decoding is our own sampler and stop logic, the
deterministic one of `dinet.engine.sampler`, whichever engine computes the logits.

Each request starts from an empty KV cache (or a cached prefix of its prompt): the
prompt, and a resumed answer's tokens so far, are evaluated in one batch, then every
new token one step at a time. The loop is written as steps (`generation`) so that a
worker can decode several requests' steps in one llama.cpp batch.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Generator, Iterator
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel

from dinet.engine._text import CompletionText
from dinet.engine.adjust import Adjuster
from dinet.engine.logprobs import token_logprobs
from dinet.engine.sampler import NothingAllowed, Sampler
from dinet.engine.testing.liar import Lie
from dinet.wire.messages import EndFrame, GenerationParams, TokenFrame, TokenLogprobs, Usage

Emit = Callable[[BaseModel], None]
ShouldStop = Callable[[], bool]


class BadRequest(Exception):
    """A request this model cannot serve; the worker answers it and keeps serving."""


class Constraint(Protocol):
    """What a request's grammar tells the loop (see `dinet.engine.llama._grammar`)."""

    def allows(self, ids: npt.NDArray[np.intp]) -> npt.NDArray[np.bool_]: ...
    def accept(self, token: int) -> None: ...  # BadRequest if it does not allow `token`
    def close(self) -> None: ...


class Model(Protocol):
    """What the generation loop needs of an engine: prompts, evaluation, token bytes."""

    n_vocab: int
    n_ctx: int

    def prompt_tokens(self, params: GenerationParams) -> tuple[list[int], tuple[str, ...]]: ...
    def start(self, prompt: list[int]) -> None: ...  # an empty KV cache, then the prompt in one batch
    def step(self, token: int) -> None: ...  # one more position
    def n_tokens(self) -> int: ...  # positions in the KV cache
    def last_logits(self) -> npt.NDArray[np.float32]: ...  # (n_vocab,) for the last position
    def piece(self, token: int) -> bytes: ...
    def is_eog(self, token: int) -> bool: ...
    def constraint(self, grammar: str) -> Constraint: ...  # BadRequest where grammars are not supported


def run_generation(
    model: Model,
    sampler: Sampler,
    model_id: str,
    params: GenerationParams,
    received_at: float,
    emit: Emit,
    should_stop: ShouldStop = lambda: False,
    lie: Lie | None = None,
    random_token: Callable[[random.Random], int] | None = None,
) -> None:
    """Generate for one request, emitting TokenFrames then one EndFrame.

    `should_stop` is asked between tokens: True ends the completion early (the
    owner has abandoned the stream), still with an EndFrame. `lie` (testing only,
    see `dinet.engine.testing.liar`) falsifies tokens with ones drawn by `random_token`.
    """
    steps = generation(model, sampler, model_id, params, received_at, emit, should_stop, lie, random_token)
    with contextlib.closing(steps):  # a failed evaluation still releases the request's grammar
        for tokens in steps:
            if tokens.fresh:
                model.start(tokens)
            else:
                model.step(tokens[0])


class Evaluate(list[int]):
    """Tokens the loop needs evaluated before it reads the logits again.

    `fresh`: the first of a request, a prompt into an empty KV cache; otherwise one
    more position of the sequence.
    """

    def __init__(self, tokens: list[int], *, fresh: bool = False) -> None:
        super().__init__(tokens)
        self.fresh = fresh


def generation(
    model: Model,
    sampler: Sampler,
    model_id: str,
    params: GenerationParams,
    received_at: float,
    emit: Emit,
    should_stop: ShouldStop = lambda: False,
    lie: Lie | None = None,
    random_token: Callable[[random.Random], int] | None = None,
) -> Generator[Evaluate, None, None]:
    """`run_generation` as steps: it yields what to evaluate, and reads `model`'s
    logits once resumed. Whoever drives it evaluates: one request alone
    (`run_generation`), or many sequences in one batch (`dinet.engine.llama._slots`).
    `model.start` and `model.step` are not called here.
    """
    if lie is not None:
        params = lie.followed(params)  # a liar that ignores part of the request
    prompt, template_stops = model.prompt_tokens(params)
    prefix = list(params.prefix_tokens)
    check_request(model, params, prompt, prefix)
    adjuster = Adjuster(params, prompt) if Adjuster.needed(params) else None
    with _constraint(model, params) as constraint:
        for token in prefix:  # a resumed answer keeps to the grammar and the penalties too
            if constraint is not None:
                constraint.accept(token)
            if adjuster is not None:
                adjuster.push(token)
        text = CompletionText(params.stop + template_stops)
        for token in prefix:
            text.prime(model.piece(token))

        # A resumed answer's tokens so far go in with the prompt, as one prefill: a peer
        # taking over mid-answer sends its first token after one batch, not one decode per
        # token already sent. llama.cpp's numbers for a position differ in the last bits
        # between a batch and single steps, so a resumed answer may go on differently from
        # the one interrupted (as it may on another CPU anyway); it is checked the same way.
        yield Evaluate(prompt + prefix, fresh=True)
        index = len(prefix)
        emitted = steps = 0
        first_at = last_at = 0.0
        finish: Literal["stop", "length"] = "length"
        tampering = lie is not None and lie.tampers and random_token is not None
        tamper = lie.tamperer(index, params.max_tokens) if lie is not None and tampering else None
        logprobs: dict[int, TokenLogprobs] = {}  # by index, until the token's frame is released
        while index < params.max_tokens:
            if tamper is not None and random_token is not None and tamper.replaces_all:
                token = tamper.token(index, -1, random_token)
            else:
                try:
                    logits: npt.NDArray[np.floating] = model.last_logits()
                    if adjuster is not None:
                        logits = adjuster.logits(logits)
                    token = _choose(sampler, logits, index, params, constraint)
                except NothingAllowed:
                    finish = "stop"  # the grammar allows nothing more, not even the end
                    break
                if params.logprobs is not None and not model.is_eog(token):
                    scored = logits if constraint is None else _masked(logits, constraint)
                    logprobs[index] = token_logprobs(scored, token, params.logprobs, model.piece)
                    if lie is not None:
                        logprobs[index] = lie.reported(logprobs[index])
                if tamper is not None and random_token is not None:
                    token = tamper.token(index, token, random_token, model.is_eog(token))
            last_at = time.perf_counter()
            first_at = first_at or last_at
            steps += 1
            if model.is_eog(token):
                finish = "stop"
                break
            if constraint is not None and tamper is None:
                constraint.accept(token)
            if adjuster is not None:
                adjuster.push(token)
            frames, stopped = text.push(index, token, model.piece(token))
            for frame in frames:
                emit(_with_logprobs(frame, logprobs))
            emitted += len(frames)
            index += 1
            if stopped:
                finish = "stop"
                break
            if index >= params.max_tokens or model.n_tokens() >= model.n_ctx:
                break
            if should_stop():
                finish = "stop"
                break
            if tamper is None or not tamper.replaces_all:
                yield Evaluate([token])
        for frame in text.finish():
            emit(_with_logprobs(frame, logprobs))
            emitted += 1

    decode_s = last_at - first_at  # the decode steps after the first token
    emit(
        EndFrame(
            finish_reason=finish,
            usage=Usage(prompt_tokens=len(prompt), completion_tokens=len(prefix) + emitted),
            ttft_ms=1000.0 * max(0.0, (first_at or time.perf_counter()) - received_at),
            tokens_per_s=(steps - 1) / decode_s if steps > 1 and decode_s > 0 else 0.0,
            model_id=model_id,
        )
    )


@contextlib.contextmanager
def _constraint(model: Model, params: GenerationParams) -> Iterator[Constraint | None]:
    if params.grammar is None:
        yield None
        return
    constraint = model.constraint(params.grammar)
    try:
        yield constraint
    finally:
        constraint.close()


def _choose(
    sampler: Sampler,
    logits: npt.NDArray[np.floating],
    index: int,
    params: GenerationParams,
    constraint: Constraint | None,
) -> int:
    """The next token: the deterministic sampler's, among the grammar's tokens if there is one."""
    if constraint is None:
        return sampler.choose(
            logits, index, temperature=params.temperature, top_p=params.top_p, seed=params.seed
        )
    return sampler.choose_allowed(
        logits, index, constraint.allows, temperature=params.temperature, top_p=params.top_p, seed=params.seed
    )


def _masked(logits: npt.NDArray[np.floating], constraint: Constraint) -> npt.NDArray[np.float64]:
    """The logits with every token the grammar refuses at -inf (asks about all of them)."""
    allowed = constraint.allows(np.arange(logits.shape[0], dtype=np.intp))
    return np.where(allowed, np.asarray(logits, dtype=np.float64), -np.inf)


def _with_logprobs(frame: TokenFrame, logprobs: dict[int, TokenLogprobs]) -> TokenFrame:
    found = logprobs.pop(frame.index, None)
    return frame if found is None else frame.model_copy(update={"logprobs": found})


def check_request(model: Model, params: GenerationParams, prompt: list[int], prefix: list[int]) -> None:
    """Refuse (BadRequest) an empty prompt, a token outside the vocabulary, or too long an input."""
    if not prompt:
        raise BadRequest("the prompt is empty")
    if any(not 0 <= token < model.n_vocab for token in prefix):
        raise BadRequest(f"a token id is outside the vocabulary ({model.n_vocab})")
    if any(token >= model.n_vocab for token, _ in params.logit_bias):
        raise BadRequest(f"a logit_bias token id is outside the vocabulary ({model.n_vocab})")
    if len(prompt) + len(prefix) >= model.n_ctx:
        raise BadRequest(
            f"prompt of {len(prompt)} tokens plus {len(prefix)} completion tokens "
            f"does not fit the context of {model.n_ctx}"
        )
