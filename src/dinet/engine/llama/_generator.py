"""The llama.cpp side of the generation loop: `Generator` runs requests on one `Llama`.

Used by the worker process: it gives the shared loop (`dinet.engine._generate`) the
model's prompts, evaluation and token bytes, and re-scores claimed completions for
verification (`_score`).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import llama_cpp
import llama_cpp.llama_cpp as llama_c
import numpy as np
import numpy.typing as npt

from dinet.engine._generate import BadRequest, Emit, ShouldStop, check_request, run_generation
from dinet.engine.adjust import Adjuster
from dinet.engine.llama._grammar import Grammar
from dinet.engine.llama._llama_cpp import chat_formatter, chat_prompt, raw_prompt, template_tools, token_piece
from dinet.engine.llama._prefix_cache import PrefixCache
from dinet.engine.llama._score import score_tokens
from dinet.engine.sampler import Sampler
from dinet.engine.testing.liar import Lie
from dinet.wire.messages import GenerationParams
from dinet.wire.verify import ScoreRequest, ScoresFrame

logger = logging.getLogger(__name__)

NO_TOOLS = (
    "this model's chat template declares no tool support: leave out tools, tool calls and tool messages"
)


class Generator:
    """Runs requests on one loaded `Llama`: one at a time here, or several at once by
    `_slots.StreamServer`, which shares its prompts, sampler and token bytes."""

    def __init__(
        self,
        llm: llama_cpp.Llama,
        model_id: str,
        lie: Lie | None = None,
        load_scorer: Callable[[], llama_cpp.Llama] | None = None,
        prefix_cache_bytes: int = 0,
    ) -> None:
        self.llm = llm
        self._load_scorer = load_scorer  # the model verification scores with; default: llm
        self._scorer: llama_cpp.Llama | None = None
        self.lie = lie  # testing only: what this worker falsifies (see dinet.engine.testing.liar)
        self.model_id = model_id
        self._vocab = llm._model.vocab
        self.n_vocab = llm.n_vocab()
        self.n_ctx = llm.n_ctx()
        self._formatter = chat_formatter(llm)
        self._tools = template_tools(llm.metadata.get("tokenizer.chat_template"))
        self.sampler = Sampler(self.n_vocab)
        self._pieces: dict[int, bytes] = {}
        self.prefix_cache = PrefixCache(llm, prefix_cache_bytes)

    def prompt_tokens(self, params: GenerationParams) -> tuple[list[int], tuple[str, ...]]:
        """The prompt's tokens and any stop strings the chat template adds."""
        if params.messages is not None:
            if self._formatter is None:
                raise BadRequest("this model has no chat template: send a raw prompt")
            if params.uses_tools and not self._tools:
                raise BadRequest(NO_TOOLS)
            return chat_prompt(self.llm, self._formatter, params.messages, params.tools)
        return raw_prompt(self.llm, params.prompt or ""), ()

    def run(
        self,
        params: GenerationParams,
        received_at: float,
        emit: Emit,
        should_stop: ShouldStop = lambda: False,
    ) -> None:
        """Generate for one request (see `run_generation`)."""
        run_generation(
            self,
            self.sampler,
            self.model_id,
            params,
            received_at,
            emit,
            should_stop,
            lie=self.lie,
            random_token=self.random_token,
        )

    def score(self, request: ScoreRequest) -> ScoresFrame:
        """Re-score a claimed completion (verification): one prefill, no decoding."""
        prompt, _ = self.prompt_tokens(request.params)
        claimed = list(request.tokens)
        params = request.params
        check_request(self, params, prompt, claimed)
        grammar = None if params.grammar is None else Grammar(self.llm, params.grammar)
        try:
            return score_tokens(
                self._scoring_llm(),
                prompt,
                claimed,
                temperature=params.temperature,
                top_p=params.top_p,
                seed=params.seed,
                grammar=grammar,
                adjuster=Adjuster(params, prompt) if Adjuster.needed(params) else None,
            )
        finally:
            if grammar is not None:
                grammar.close()

    def constraint(self, grammar: str) -> Grammar:
        return Grammar(self.llm, grammar)

    def _scoring_llm(self) -> llama_cpp.Llama:
        if self._scorer is None:
            self._scorer = self.llm
            if self._load_scorer is not None:
                try:
                    self._scorer = self._load_scorer()
                except (OSError, ValueError, RuntimeError, MemoryError) as exc:
                    logger.warning("scoring with the served model itself (slower): %s", exc)
        return self._scorer

    def random_token(self, rng: random.Random) -> int:
        """A liar's token: any ordinary vocabulary entry (no control or end tokens)."""
        while True:
            token = rng.randrange(self.n_vocab)
            if not llama_c.llama_vocab_is_control(self._vocab, token) and not self.is_eog(token):
                return token

    def start(self, prompt: list[int]) -> None:
        self.prefix_cache.start(prompt)

    def step(self, token: int) -> None:
        self.llm.eval([token])

    def n_tokens(self) -> int:
        return self.llm.n_tokens

    def last_logits(self) -> npt.NDArray[np.float32]:
        """A view (no copy) of the logits llama.cpp computed for the last position."""
        pointer = llama_c.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))

    def is_eog(self, token: int) -> bool:
        return bool(llama_c.llama_vocab_is_eog(self._vocab, token))

    def piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = token_piece(self.llm, token)
        return piece
