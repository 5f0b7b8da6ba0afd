"""The generation loop of a worker: prompt, prefill, choose, detokenize, stop.

Written against llama-cpp-python's `Llama` for loading, tokenizing and `eval`, but
with our own sampler and stop logic, so that decoding is the deterministic one of
`dinet.engine.sampler`.

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
from typing import Literal

import llama_cpp
import llama_cpp.llama_cpp as llama_c
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel

from dinet.engine._llama import chat_formatter, chat_prompt, raw_prompt
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
        self._n_vocab = llm.n_vocab()
        self._n_ctx = llm.n_ctx()
        self._formatter = chat_formatter(llm)
        self._sampler = Sampler(self._n_vocab)
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
        """Generate for one request, emitting TokenFrames then one EndFrame.

        `should_stop` is asked between tokens: True ends the completion early (the
        owner has abandoned the stream), still with an EndFrame.
        """
        prompt, template_stops = self.prompt_tokens(params)
        prefix = list(params.prefix_tokens)
        self._check(prompt, prefix)
        text = CompletionText(params.stop + template_stops)
        for token in prefix:
            text.prime(self._piece(token))

        llm = self._llm
        llm.reset()
        llm.eval(prompt)
        for token in prefix:  # one step each, exactly as they were first generated
            llm.eval([token])
        index = len(prefix)
        emitted = steps = 0
        first_at = last_at = 0.0
        finish: Literal["stop", "length"] = "length"
        tamper = self._lie.tamperer(index, params.max_tokens) if self._lie is not None else None
        while index < params.max_tokens:
            if tamper is not None and tamper.replaces_all:
                token = tamper.token(index, -1, self._random_token)
            else:
                token = self._sampler.choose(
                    self._last_logits(),
                    index,
                    temperature=params.temperature,
                    top_p=params.top_p,
                    seed=params.seed,
                )
                if tamper is not None:
                    ending = bool(llama_c.llama_vocab_is_eog(self._vocab, token))
                    token = tamper.token(index, token, self._random_token, ending)
            last_at = time.perf_counter()
            first_at = first_at or last_at
            steps += 1
            if llama_c.llama_vocab_is_eog(self._vocab, token):
                finish = "stop"
                break
            frames, stopped = text.push(index, token, self._piece(token))
            for frame in frames:
                emit(frame)
            emitted += len(frames)
            index += 1
            if stopped:
                finish = "stop"
                break
            if index >= params.max_tokens or llm.n_tokens >= self._n_ctx:
                break
            if should_stop():
                finish = "stop"
                break
            if tamper is None or not tamper.replaces_all:
                llm.eval([token])
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
                model_id=self._model_id,
            )
        )

    def score(self, request: ScoreRequest) -> ScoresFrame:
        """Re-score a claimed completion (verification): one prefill, no decoding."""
        prompt, _ = self.prompt_tokens(request.params)
        claimed = list(request.tokens)
        self._check(prompt, claimed)
        params = request.params
        return score_tokens(self._scoring_llm(), prompt, claimed, temperature=params.temperature,
                            top_p=params.top_p, seed=params.seed)

    def _scoring_llm(self) -> llama_cpp.Llama:
        if self._scorer is None:
            self._scorer = self._llm
            if self._load_scorer is not None:
                try:
                    self._scorer = self._load_scorer()
                except (OSError, ValueError, RuntimeError, MemoryError) as exc:
                    logger.warning("scoring with the served model itself (slower): %s", exc)
        return self._scorer

    def _check(self, prompt: list[int], prefix: list[int]) -> None:
        if not prompt:
            raise BadRequest("the prompt is empty")
        if any(not 0 <= token < self._n_vocab for token in prefix):
            raise BadRequest(f"a token id is outside the vocabulary ({self._n_vocab})")
        if len(prompt) + len(prefix) >= self._n_ctx:
            raise BadRequest(
                f"prompt of {len(prompt)} tokens plus {len(prefix)} completion tokens "
                f"does not fit the context of {self._n_ctx}"
            )

    def _last_logits(self) -> npt.NDArray[np.float32]:
        """A view (no copy) of the logits llama.cpp computed for the last position."""
        pointer = llama_c.llama_get_logits_ith(self._llm.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self._n_vocab,))

    def _random_token(self, rng: random.Random) -> int:
        """A liar's token: any ordinary vocabulary entry (no control or end tokens)."""
        while True:
            token = rng.randrange(self._n_vocab)
            if not llama_c.llama_vocab_is_control(self._vocab, token) and not llama_c.llama_vocab_is_eog(
                self._vocab, token
            ):
                return token

    def _piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self._llm.detokenize([token])
        return piece
