"""Deterministic token choice: the same logits, seed and index give the same token.

Greedy at temperature 0 (ties go to the lowest token id). Above it: logits divided
by the temperature, then the nucleus (top-p) over tokens ordered by logit descending
with ties broken by lower token id, a float64 softmax, and an inverse-CDF draw with
`u = uniform(seed, index)`, a number keyed only by the seed and the token's position
in the completion. No global random state is used, so any honest node holding the
same prefix continues it the same way.

Only the head of the ordering is sorted: it is grown until it holds the nucleus (or
the draw), which gives the same token as a full sort at a fraction of the cost on a
49152-token vocabulary. `Sampler` keeps its float64 scratch arrays between calls:
fresh 400 KB arrays per token cost more in page faults than the arithmetic.

A constraint (a grammar: structured outputs) restricts the choice to the tokens it
allows: the token is the one the rules above give for logits where every other token
is -inf. Asking a grammar about a token is costly (about 5 ms for the whole vocabulary
on these machines, a third of a decode step), so `choose_allowed` asks only about the
head of the order, growing it until the answer cannot depend on the tokens beyond it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

_FIRST_MARGIN = 4.0  # the first head holds tokens within this many units of the best

Allowed = Callable[[npt.NDArray[np.intp]], npt.NDArray[np.bool_]]  # token ids -> which the constraint allows


class NothingAllowed(Exception):
    """The constraint allows no token of the vocabulary."""


def uniform(seed: int, index: int) -> float:
    """A number in [0, 1) that depends only on (seed, index)."""
    key = seed.to_bytes(8, "big") + index.to_bytes(8, "big")
    digest = hashlib.blake2b(key, digest_size=8, person=b"dinet-sampler").digest()
    return int.from_bytes(digest, "big") / 2.0**64


class Sampler:
    """Chooses tokens for one vocabulary size, reusing its scratch arrays."""

    def __init__(self, n_vocab: int) -> None:
        self._scaled = np.empty(n_vocab, dtype=np.float64)
        self._weights = np.empty(n_vocab, dtype=np.float64)

    def choose(
        self,
        logits: npt.NDArray[np.floating],
        index: int,
        *,
        temperature: float,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> int:
        """The token to emit at completion position `index`, given the logits for it."""
        if temperature <= 0.0:
            return int(np.argmax(logits))  # the first maximum
        # In float64 whatever the logits' type: float32 logits divided as float32 would round
        # the quotient (and the temperature) to float32, and the draw would depend on the engine.
        scaled = np.divide(logits, temperature, out=self._scaled, dtype=np.float64)  # (n_vocab,)
        top = float(scaled.max())
        weights = np.subtract(scaled, top, out=self._weights)
        np.exp(weights, out=weights)  # unnormalised softmax; the best token weighs 1.0
        total = float(weights.sum())
        u = uniform(seed, index)
        margin = _FIRST_MARGIN
        while True:
            head = _head_order(scaled, top - margin)  # a prefix of the full order
            cumulative = np.cumsum(weights[head])
            complete = margin == np.inf or head.shape[0] == scaled.shape[0]
            if top_p < 1.0:
                inside = np.flatnonzero(cumulative >= top_p * total)
                if inside.size or complete:
                    end = int(inside[0]) + 1 if inside.size else head.shape[0]
                    return _invert(head[:end], cumulative[:end], u * float(cumulative[end - 1]))
            elif cumulative[-1] > u * total or complete:
                return _invert(head, cumulative, u * total)
            margin = margin * 2 if margin < 1e6 else np.inf

    def choose_allowed(
        self,
        logits: npt.NDArray[np.floating],
        index: int,
        allowed: Allowed,
        *,
        temperature: float,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> int:
        """What `choose` gives for `logits` with every token `allowed` refuses set to -inf,
        asking `allowed` about as few tokens as that takes. NothingAllowed if it allows none."""
        greedy = temperature <= 0.0
        if greedy:
            scores = np.asarray(logits, dtype=np.float64)
            total = 0.0
        else:
            scores = np.divide(logits, temperature, out=self._scaled, dtype=np.float64)
        top = float(scores.max())
        if not greedy:
            weights = np.subtract(scores, top, out=self._weights)
            np.exp(weights, out=weights)
            total = float(weights.sum())
        u = uniform(seed, index)
        margin = 0.0 if greedy else _FIRST_MARGIN  # greedy: the best token alone, most often allowed
        head = _head_order(scores, top - margin)  # grows as a prefix of the full order
        verdicts = allowed(head) if head.shape[0] else np.empty(0, dtype=np.bool_)
        while True:
            complete = margin == np.inf or head.shape[0] == scores.shape[0]
            ok = head[verdicts]  # the allowed tokens of the head, in order
            if greedy and ok.shape[0]:
                return int(ok[0])
            if not greedy:
                cumulative = np.cumsum(weights[ok])
                # Tokens beyond the head come after it in the order; their weight is only
                # known up to which of them are allowed: between nothing and all of it.
                beyond = 0.0 if complete else max(0.0, total - float(weights[head].sum()))
                token = _draw_allowed(ok, cumulative, beyond, u, top_p)
                if token is not None:
                    return token
            if complete:
                raise NothingAllowed("the constraint allows no token")
            above = top - margin
            margin = 1.0 if margin == 0.0 else margin * 2 if margin < 1e6 else np.inf
            # The order's next stretch: it scores below the whole head, so it follows it.
            ring = _head_order(scores, top - margin, below=above)
            if ring.shape[0]:
                head = np.concatenate([head, ring])
                verdicts = np.concatenate([verdicts, allowed(ring)])


def _draw_allowed(
    ok: npt.NDArray[np.intp],
    cumulative: npt.NDArray[np.float64],
    beyond: float,
    u: float,
    top_p: float,
) -> int | None:
    """The draw among the allowed tokens `ok` (the first of the order, with their cumulative
    weights), if it is the same however much of the weight `beyond` them is allowed; None
    when the head must grow to decide."""
    if not ok.shape[0]:
        return None
    known = float(cumulative[-1])
    if top_p < 1.0:
        # The nucleus ends at the same token whether the allowed total is `known` or more.
        least = int(np.flatnonzero(cumulative >= top_p * known)[0])
        most = np.flatnonzero(cumulative >= top_p * (known + beyond))
        if not most.size or int(most[0]) != least:
            return None
        end = least + 1
        return _invert(ok[:end], cumulative[:end], u * float(cumulative[end - 1]))
    least_at = int(np.searchsorted(cumulative, u * known, side="right"))
    most_at = int(np.searchsorted(cumulative, u * (known + beyond), side="right"))
    if beyond == 0.0:
        return int(ok[min(least_at, ok.shape[0] - 1)])
    if most_at < ok.shape[0] and least_at == most_at:
        return int(ok[least_at])
    return None


def choose_token(
    logits: npt.NDArray[np.floating],
    index: int,
    *,
    temperature: float,
    top_p: float = 1.0,
    seed: int = 0,
) -> int:
    """One-off `Sampler(len(logits)).choose(...)`."""
    return Sampler(logits.shape[0]).choose(logits, index, temperature=temperature, top_p=top_p, seed=seed)


def _head_order(
    scaled: npt.NDArray[np.float64], threshold: float, below: float | None = None
) -> npt.NDArray[np.intp]:
    """Ids of all tokens scoring >= threshold (and < below, if given), best first, ties by
    ascending id."""
    chosen = scaled >= threshold
    if below is not None:
        chosen &= scaled < below
    candidates = np.flatnonzero(chosen)  # ascending ids
    # A stable sort on the negated score keeps ascending ids among equal scores.
    return candidates[np.argsort(-scaled[candidates], kind="stable")]


def _invert(order: npt.NDArray[np.intp], cumulative: npt.NDArray[np.float64], target: float) -> int:
    """The first token whose cumulative weight exceeds target (the last one if none does)."""
    position = int(np.searchsorted(cumulative, target, side="right"))
    return int(order[min(position, order.shape[0] - 1)])
