"""A GBNF grammar on one model's vocabulary: which tokens it allows next, and its state.

llama.cpp's grammar sampler does the work: `llama_sampler_apply` sets the logit of every
token the grammar refuses to -inf, `llama_sampler_accept` moves it past a token. Here it
only judges the token ids it is asked about (see `Sampler.choose_allowed`): each is
given a logit of 0 and read back.

A token the grammar refuses must never be accepted: llama.cpp answers that by throwing a
C++ exception, which ends the process through the C API. `accept` checks first.
"""

from __future__ import annotations

import ctypes

import llama_cpp
import llama_cpp.llama_cpp as llama_c
import numpy as np
import numpy.typing as npt

from dinet.engine._generate import BadRequest

# llama_token_data: {int32 id; float logit; float p}
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)], align=True)
assert _TOKEN_DATA.itemsize == ctypes.sizeof(llama_c.llama_token_data)


class GrammarBroken(BadRequest):
    """A token the grammar does not allow was to be accepted (a resumed prefix that breaks it)."""


class Grammar:
    """One request's grammar state. Close it when the request ends."""

    def __init__(self, llm: llama_cpp.Llama, gbnf: str) -> None:
        self._sampler = llama_c.llama_sampler_init_grammar(llm._model.vocab, gbnf.encode(), b"root")
        if not self._sampler:
            raise BadRequest("the grammar does not parse (GBNF, with a rule named root)")
        self._data = np.zeros(llm.n_vocab(), dtype=_TOKEN_DATA)

    def allows(self, ids: npt.NDArray[np.intp]) -> npt.NDArray[np.bool_]:
        """Which of `ids` the grammar allows as the next token."""
        data = self._data[: ids.shape[0]]
        data["id"] = ids
        data["logit"] = 0.0
        array = llama_c.llama_token_data_array(
            data.ctypes.data_as(llama_c.llama_token_data_p), ids.shape[0], -1, False
        )
        llama_c.llama_sampler_apply(self._sampler, ctypes.byref(array))
        return np.isfinite(data["logit"])

    def allows_all(self) -> npt.NDArray[np.bool_]:
        """For every token of the vocabulary, whether it may come next."""
        return self.allows(np.arange(self._data.shape[0], dtype=np.intp))

    def accept(self, token: int) -> None:
        """Move past `token`; GrammarBroken if the grammar does not allow it."""
        if not self.allows(np.array([token], dtype=np.intp))[0]:
            raise GrammarBroken(f"token {token} breaks the grammar")
        llama_c.llama_sampler_accept(self._sampler, token)

    def close(self) -> None:
        if self._sampler:
            llama_c.llama_sampler_free(self._sampler)
            self._sampler = None
