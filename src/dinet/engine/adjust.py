"""Sampling controls that change the logits before the sampler chooses: logit bias,
repetition, presence and frequency penalties, and min-p.

All are deterministic functions of the logits, the request and the tokens so far, so
a peer that resumes an answer or verifies it adjusts the logits exactly as the first
peer did. In this order, in double precision, on the raw logits `l`:

1. `logit_bias`: `l[t] += bias[t]`.
2. `repetition_penalty` r, for each token t among the last 64 tokens of prompt and
   completion together: `l[t] /= r` where `l[t] > 0`, else `l[t] *= r`.
3. `presence_penalty` p and `frequency_penalty` f, with `c[t]` the times t has been
   emitted in the completion so far: `l[t] -= p * (c[t] > 0) + f * c[t]`.
4. `min_p` m (sampled answers only): every token whose sampling weight
   `exp((l[t] - max l) / temperature)` is below m gets -inf.

A request with none of them leaves the logits alone (no copy).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from dinet.wire.messages import GenerationParams

REPETITION_WINDOW = 64  # tokens, as llama.cpp's and Ollama's default `repeat_last_n`
# How far below the min-p floor a verifier still takes a claimed token (logit units): the
# noise between an answering engine and a verifier's (dinet.trust.verify, greedy_gap).
MIN_P_SLACK = 0.75


class Adjuster:
    """The logit adjustments of one request, following its tokens as they come."""

    def __init__(self, params: GenerationParams, prompt: Sequence[int]) -> None:
        self._params = params
        self._bias = dict(params.logit_bias)
        self._recent: deque[int] = deque(prompt[-REPETITION_WINDOW:], maxlen=REPETITION_WINDOW)
        self._counts: Counter[int] = Counter()

    @staticmethod
    def needed(params: GenerationParams) -> bool:
        return bool(
            params.logit_bias
            or params.repetition_penalty != 1.0
            or params.presence_penalty
            or params.frequency_penalty
            or (params.min_p and params.temperature > 0.0)
        )

    def push(self, token: int) -> None:
        """A completion token was emitted (or replayed from a resumed prefix)."""
        self._recent.append(token)
        self._counts[token] += 1

    def logits(self, raw: npt.NDArray[np.floating], spared: int | None = None) -> npt.NDArray[np.float64]:
        """The adjusted logits for the next token, a new array. A verifier names the claimed
        token as `spared`: min-p keeps it if it lies within `MIN_P_SLACK` below the floor,
        since logit noise between engines can move a token across a hard cut."""
        params = self._params
        logits = np.asarray(raw, dtype=np.float64).copy()  # (n_vocab,)
        if self._bias:
            ids = np.fromiter(self._bias, dtype=np.intp)
            logits[ids] += np.fromiter(self._bias.values(), dtype=np.float64)
        if params.repetition_penalty != 1.0 and self._recent:
            seen = np.unique(np.fromiter(self._recent, dtype=np.intp))
            values = logits[seen]
            r = params.repetition_penalty
            logits[seen] = np.where(values > 0.0, values / r, values * r)
        if (params.presence_penalty or params.frequency_penalty) and self._counts:
            ids = np.fromiter(self._counts, dtype=np.intp)
            counts = np.fromiter(self._counts.values(), dtype=np.float64)
            logits[ids] -= params.presence_penalty + params.frequency_penalty * counts
        if params.min_p and params.temperature > 0.0:
            floor = float(logits.max()) + params.temperature * math.log(params.min_p)
            kept = spared is not None and logits[spared] >= floor - MIN_P_SLACK
            value = logits[spared] if kept else 0.0
            logits[logits < floor] = -np.inf
            if kept:
                logits[spared] = value
        return logits
