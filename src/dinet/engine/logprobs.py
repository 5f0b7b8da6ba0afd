"""Log-probabilities of the tokens a request asked them for (`GenerationParams.logprobs`).

They are of the logits the sampler chose from, at temperature 1: after the adjustments
of `dinet.engine.adjust`, with the tokens a grammar refuses at -inf. A verifier's scores
(`dinet.wire.verify.PositionScore.logprob`) are of the same logits, so a claimed
log-probability can be checked against them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from dinet.wire.messages import MAX_PIECE_BYTES, TokenChoice, TokenLogprobs


def token_logprobs(
    logits: npt.NDArray[np.floating], token: int, top: int, piece: Callable[[int], bytes]
) -> TokenLogprobs:
    """`token`'s log-probability under `logits`, and the `top` most likely tokens' (by
    log-probability, ties to the lower id; tokens at -inf are never listed)."""
    values = np.asarray(logits, dtype=np.float64)  # (n_vocab,)
    best = float(values.max())
    log_z = best + float(np.log(np.exp(values - best).sum()))
    choices: list[TokenChoice] = []
    if top:
        head = np.argpartition(-values, min(top, values.shape[0]) - 1)[:top]
        ranked = sorted((int(t) for t in head if np.isfinite(values[t])), key=lambda t: (-values[t], t))
        choices = [
            TokenChoice(token_id=t, piece=_hex(piece(t)), logprob=_logprob(values[t], log_z)) for t in ranked
        ]
    return TokenLogprobs(logprob=_logprob(values[token], log_z), piece=_hex(piece(token)), top=tuple(choices))


def _logprob(value: float, log_z: float) -> float:
    return min(0.0, float(value) - log_z)


def _hex(piece: bytes) -> str:
    return piece[:MAX_PIECE_BYTES].hex()
