"""A draft model: a small whole model of the same vocabulary guesses a chain's next tokens.

A chain's first stage follows each chosen token with guesses that the last stage checks
in the same trip (`docs/sharding.md`, "Guessed tokens"). Prompt lookup guesses only
where the answer copies its context; a draft model guesses everywhere, as well as it
agrees with the chain's model: a low-bit copy of the same model agrees on most tokens.
The draft decodes greedily with llama.cpp: a guess only saves trips, it never changes
the answer (the last stage keeps what it would have chosen itself).

The draft's KV cache follows the sequence it last drafted for: each proposal keeps the
longest prefix it shares with the chain's tokens and evaluates only the rest, so the
guesses taken, and the token after them, cost one batch the next time.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import llama_cpp
import llama_cpp.llama_cpp as llama_c
import numpy as np
import numpy.typing as npt

from dinet.engine.llama._llama_cpp import load_llama
from dinet.engine.lookup import MAX_DRAFT, AdaptiveDraft


class DraftModel:
    """One loaded draft model, shared by the sessions of a stage (one at a time: they run
    on the stage's compute thread)."""

    def __init__(self, llm: llama_cpp.Llama) -> None:
        self._llm = llm
        self.n_vocab = llm.n_vocab()

    @classmethod
    def load(cls, path: Path, *, n_ctx: int, threads: int) -> DraftModel:
        return cls(load_llama(path, threads=threads, n_ctx=n_ctx))

    def greedy(self, tokens: Sequence[int], count: int) -> list[int]:
        """The draft's `count` likeliest next tokens after `tokens`, one after another."""
        llm = self._llm
        count = min(count, llm.n_ctx() - len(tokens))
        if count <= 0 or not tokens:
            return []
        cached = llm.input_ids[: llm.n_tokens]
        held = _shared_prefix(cached, tokens)
        llm.n_tokens = min(held, len(tokens) - 1)  # the last token again: its logits are the guess
        llm.eval(list(tokens[llm.n_tokens :]))
        guesses: list[int] = []
        while True:
            guesses.append(self._likeliest())
            if len(guesses) == count:
                return guesses
            llm.eval(guesses[-1:])

    def _likeliest(self) -> int:
        row = llama_c.llama_get_logits_ith(self._llm._ctx.ctx, -1)  # the last output row's
        logits = np.ctypeslib.as_array(row, shape=(self.n_vocab,))
        return int(np.argmax(logits))


class ModelDraft(AdaptiveDraft):
    """One session's guesses from a shared draft model, and how many to make next."""

    def __init__(self, model: DraftModel, max_draft: int = MAX_DRAFT) -> None:
        super().__init__(max_draft)
        self._model = model

    def propose(self, tokens: Sequence[int], room: int) -> list[int]:
        """Up to `self.size` (and `room`) tokens to follow `tokens`."""
        return self._model.greedy(tokens, min(self.size, room))


def _shared_prefix(cached: npt.NDArray[np.intc], tokens: Sequence[int]) -> int:
    n = min(len(cached), len(tokens))
    differ = np.flatnonzero(np.asarray(cached[:n]) != np.asarray(tokens[:n]))
    return int(differ[0]) if differ.size else n
