"""Reusing the keys and values of earlier prompts (a prefix cache), as llama-server does.

A chat's next turn repeats the whole conversation so far, and a system prompt or a
document opens many requests. The context still holds the last request's tokens, and a
bounded LRU in RAM keeps llama.cpp's state of earlier sequences; a new prompt starts from
the longest of them that it begins with, and only the rest is evaluated. The answer is
the same as after a full prefill: a position's keys and values depend only on the tokens
before it (`tests/engine/llama/test_prefix_cache.py` checks the tokens).
"""

from __future__ import annotations

import ctypes
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import llama_cpp
import llama_cpp.llama_cpp as llama_c
import numpy as np

logger = logging.getLogger(__name__)

SEQ = 0  # the one sequence a `Llama` decodes
MIN_SAVED_TOKENS = 32  # shorter states are cheaper to evaluate again than to keep


@dataclass
class _Saved:
    tokens: np.ndarray  # the sequence's tokens, position by position
    state: ctypes.Array[ctypes.c_uint8]  # llama.cpp's keys and values of that sequence


def common_prefix(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray) -> int:
    """How many leading tokens `a` and `b` share."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    differs = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(differs[0]) if differs.size else n


class PrefixCache:
    """Puts prompts into one `Llama`'s context, reusing what it already holds or saved.

    `max_bytes` bounds the saved states (least recently used go first); 0 turns the
    cache off: every prompt is evaluated from its first token, as before.
    """

    def __init__(self, llm: llama_cpp.Llama, max_bytes: int) -> None:
        self._llm = llm
        self._max_bytes = max_bytes
        self._saved: OrderedDict[bytes, _Saved] = OrderedDict()
        self._bytes = 0
        # Only tokens of a prompt are reused, never those of an answer: llama.cpp's keys and
        # values from decoding one token at a time differ in the last bits from a prefill's.
        self._prefilled = 0  # the context's first tokens that came from a prompt
        self.reused = 0  # tokens of the last prompt not evaluated again (for tests and logs)

    def start(self, prompt: list[int]) -> None:
        """Evaluate `prompt` from position 0, so that the context's last logits are its own."""
        llm = self._llm
        reuse = 0
        if self._max_bytes > 0:
            # Scoring on this context resets it: then nothing in it is ours any more.
            live = min(self._prefilled, llm.n_tokens)
            reuse = common_prefix(llm.input_ids[:live], prompt)
            key, saved_reuse = self._best_saved(prompt)
            if reuse < live or saved_reuse > reuse:
                self._save_live(live)  # the prompt would overwrite what the context holds
            if key is not None and saved_reuse > reuse:
                reuse = saved_reuse if self._restore(key) else 0
        # At least two tokens are evaluated again: their last logits start the answer, and
        # llama.cpp's single-token path rounds differently from a batch (a full prefill).
        self.reused = llm.n_tokens = max(0, min(reuse, len(prompt) - 2))
        prefill(llm, prompt[self.reused :])
        self._prefilled = len(prompt)
        logger.debug(
            "prompt of %d tokens: %d reused, %d states kept", len(prompt), self.reused, len(self._saved)
        )

    def _best_saved(self, prompt: list[int]) -> tuple[bytes | None, int]:
        best: tuple[bytes | None, int] = (None, 0)
        for key, saved in self._saved.items():
            shared = common_prefix(saved.tokens, prompt)
            if shared > best[1]:
                best = (key, shared)
        return best

    def _save_live(self, live: int) -> None:
        """Keep the context's first `live` tokens' state (the rest is dropped from it)."""
        llm = self._llm
        tokens = np.array(llm.input_ids[:live], dtype=np.int32)
        key = tokens.tobytes()
        if key in self._saved:
            self._saved.move_to_end(key)
            return
        if live < MIN_SAVED_TOKENS:
            return
        llama_c.llama_memory_seq_rm(llama_c.llama_get_memory(llm.ctx), SEQ, live, -1)
        llm.n_tokens = live
        size = llama_c.llama_state_seq_get_size(llm.ctx, SEQ)
        if size > self._max_bytes:
            return
        try:
            state = (ctypes.c_uint8 * size)()
        except MemoryError:  # under the worker's memory limit: serving matters more
            logger.warning("no memory to keep a prompt's state of %d bytes", size)
            return
        written = llama_c.llama_state_seq_get_data(llm.ctx, state, size, SEQ)
        if written != size:
            logger.warning("could not save a sequence's state (%d of %d bytes)", written, size)
            return
        self._saved[key] = _Saved(tokens, state)
        self._bytes += size
        while self._bytes > self._max_bytes:
            _, dropped = self._saved.popitem(last=False)
            self._bytes -= len(dropped.state)

    def _restore(self, key: bytes) -> bool:
        """Put a saved sequence in the context (False if llama.cpp refused it: the context
        then holds nothing)."""
        llm = self._llm
        saved = self._saved[key]
        self._saved.move_to_end(key)
        llm.n_tokens = 0
        llama_c.llama_memory_seq_rm(llama_c.llama_get_memory(llm.ctx), SEQ, -1, -1)
        read = llama_c.llama_state_seq_set_data(llm.ctx, saved.state, len(saved.state), SEQ)
        if read != len(saved.state):
            logger.warning("could not restore a saved sequence; evaluating the prompt in full")
            del self._saved[key]
            self._bytes -= len(saved.state)
            return False
        n = len(saved.tokens)
        llm.input_ids[:n] = saved.tokens
        llm.n_tokens = n
        return True


def prefill(llm: llama_cpp.Llama, tokens: Sequence[int]) -> None:
    """Evaluate `tokens` after the context's own in batches, none of them of a single token
    where that can be helped (see `PrefixCache.start`)."""
    done = 0
    while done < len(tokens):
        end = min(len(tokens), done + llm.n_batch)
        if len(tokens) - end == 1:
            end -= 1
        llm.eval(tokens[done:end])
        done = end
