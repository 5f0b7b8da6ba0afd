"""The generation loop: prompt, prefill, choose, detokenize, stop.

`run_generation` drives any `Model`: llama-cpp-python's `Llama` here (`Generator`,
used by the worker) and the torch layer-range engine (`dinet.engine._torch_generate`).
Decoding is our own sampler and stop logic, the deterministic one of
`dinet.engine.sampler`, whichever engine computes the logits.

Each request starts from an empty KV cache: the prompt is evaluated in one batch,
then every token one step at a time. A resume prefix is replayed one step per token
too, not batched with the prompt: llama.cpp's logits depend on how tokens were
batched, and a batched prefix was measured to flip greedy choices a few tokens
later. Replaying it the way it was generated reproduces the first node's logits bit
for bit, so a resumed completion continues exactly as the original would have, at
the cost of one decode step per prefix token.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Literal, Protocol

import llama_cpp
import llama_cpp.llama_cpp as llama_c
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel

from dinet.engine._llama import chat_formatter, chat_prompt, raw_prompt, token_piece
from dinet.engine._score import score_tokens
from dinet.engine._text import CompletionText
from dinet.engine.liar import Lie
from dinet.engine.sampler import Sampler
from dinet.wire.messages import EndFrame, GenerationParams, Usage
from dinet.wire.verify import ScoreRequest, ScoresFrame

logger = logging.getLogger(__name__)

Emit = Callable[[BaseModel], None]
ShouldStop = Callable[[], bool]


class BadRequest(Exception):
    """A request this model cannot serve; the worker answers it and keeps serving."""


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
    see `dinet.engine.liar`) falsifies tokens with ones drawn by `random_token`.
    """
    prompt, template_stops = model.prompt_tokens(params)
    prefix = list(params.prefix_tokens)
    _check(model, prompt, prefix)
    text = CompletionText(params.stop + template_stops)
    for token in prefix:
        text.prime(model.piece(token))

    model.start(prompt)
    for token in prefix:  # one step each, exactly as they were first generated
        model.step(token)
    index = len(prefix)
    emitted = steps = 0
    first_at = last_at = 0.0
    finish: Literal["stop", "length"] = "length"
    tamper = lie.tamperer(index, params.max_tokens) if lie is not None and random_token else None
    while index < params.max_tokens:
        if tamper is not None and random_token is not None and tamper.replaces_all:
            token = tamper.token(index, -1, random_token)
        else:
            token = sampler.choose(
                model.last_logits(),
                index,
                temperature=params.temperature,
                top_p=params.top_p,
                seed=params.seed,
            )
            if tamper is not None and random_token is not None:
                token = tamper.token(index, token, random_token, model.is_eog(token))
        last_at = time.perf_counter()
        first_at = first_at or last_at
        steps += 1
        if model.is_eog(token):
            finish = "stop"
            break
        frames, stopped = text.push(index, token, model.piece(token))
        for frame in frames:
            emit(frame)
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
            model.step(token)
    for frame in text.finish():
        emit(frame)
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


def _check(model: Model, prompt: list[int], prefix: list[int]) -> None:
    if not prompt:
        raise BadRequest("the prompt is empty")
    if any(not 0 <= token < model.n_vocab for token in prefix):
        raise BadRequest(f"a token id is outside the vocabulary ({model.n_vocab})")
    if len(prompt) + len(prefix) >= model.n_ctx:
        raise BadRequest(
            f"prompt of {len(prompt)} tokens plus {len(prefix)} completion tokens "
            f"does not fit the context of {model.n_ctx}"
        )


class Generator:
    """Runs requests, one at a time, on one loaded `Llama`."""

    def __init__(
        self,
        llm: llama_cpp.Llama,
        model_id: str,
        lie: Lie | None = None,
        load_scorer: Callable[[], llama_cpp.Llama] | None = None,
    ) -> None:
        self._llm = llm
        self._load_scorer = load_scorer  # the model verification scores with; default: llm
        self._scorer: llama_cpp.Llama | None = None
        self._lie = lie  # testing only: what this worker falsifies (see dinet.engine.liar)
        self._model_id = model_id
        self._vocab = llm._model.vocab
        self.n_vocab = llm.n_vocab()
        self.n_ctx = llm.n_ctx()
        self._formatter = chat_formatter(llm)
        self._sampler = Sampler(self.n_vocab)
        self._pieces: dict[int, bytes] = {}

    def prompt_tokens(self, params: GenerationParams) -> tuple[list[int], tuple[str, ...]]:
        """The prompt's tokens and any stop strings the chat template adds."""
        if params.messages is not None:
            if self._formatter is None:
                raise BadRequest("this model has no chat template: send a raw prompt")
            return chat_prompt(self._llm, self._formatter, params.messages)
        return raw_prompt(self._llm, params.prompt or ""), ()

    def run(
        self,
        params: GenerationParams,
        received_at: float,
        emit: Emit,
        should_stop: ShouldStop = lambda: False,
    ) -> None:
        """Generate for one request (see `run_generation`)."""
        run_generation(
            self, self._sampler, self._model_id, params, received_at, emit, should_stop,
            lie=self._lie, random_token=self._random_token,
        )

    def score(self, request: ScoreRequest) -> ScoresFrame:
        """Re-score a claimed completion (verification): one prefill, no decoding."""
        prompt, _ = self.prompt_tokens(request.params)
        claimed = list(request.tokens)
        _check(self, prompt, claimed)
        params = request.params
        return score_tokens(
            self._scoring_llm(), prompt, claimed, temperature=params.temperature, top_p=params.top_p,
            seed=params.seed,
        )

    def _scoring_llm(self) -> llama_cpp.Llama:
        if self._scorer is None:
            self._scorer = self._llm
            if self._load_scorer is not None:
                try:
                    self._scorer = self._load_scorer()
                except (OSError, ValueError, RuntimeError, MemoryError) as exc:
                    logger.warning("scoring with the served model itself (slower): %s", exc)
        return self._scorer

    def _random_token(self, rng: random.Random) -> int:
        """A liar's token: any ordinary vocabulary entry (no control or end tokens)."""
        while True:
            token = rng.randrange(self.n_vocab)
            if not llama_c.llama_vocab_is_control(self._vocab, token) and not self.is_eog(token):
                return token

    def start(self, prompt: list[int]) -> None:
        self._llm.reset()
        self._llm.eval(prompt)

    def step(self, token: int) -> None:
        self._llm.eval([token])

    def n_tokens(self) -> int:
        return self._llm.n_tokens

    def last_logits(self) -> npt.NDArray[np.float32]:
        """A view (no copy) of the logits llama.cpp computed for the last position."""
        pointer = llama_c.llama_get_logits_ith(self._llm.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))

    def is_eog(self, token: int) -> bool:
        return bool(llama_c.llama_vocab_is_eog(self._vocab, token))

    def piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = token_piece(self._llm, token)
        return piece
