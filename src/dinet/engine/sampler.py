"""Deterministic token choice: the same logits, seed and index give the same token.

Greedy at temperature 0. Above it: temperature, then nucleus (top-p) over tokens
ordered by logit descending with ties broken by lower token id, a float64 softmax,
and an inverse-CDF draw with `u = uniform(seed, index)`, a number keyed only by the
seed and the token's position in the completion. No global random state is used, so
any honest node holding the same prefix continues it the same way.

Only the head of the ordering is sorted: the candidates are grown until they hold the
nucleus (or the draw), which gives the same token as a full sort at a fraction of the
cost on a 49152-token vocabulary.
"""

from __future__ import annotations

import hashlib

import numpy as np
import numpy.typing as npt

_FIRST_CANDIDATES = 64


def uniform(seed: int, index: int) -> float:
    """A number in [0, 1) that depends only on (seed, index)."""
    key = seed.to_bytes(8, "big") + index.to_bytes(8, "big")
    digest = hashlib.blake2b(key, digest_size=8, person=b"dinet-sampler").digest()
    return int.from_bytes(digest, "big") / 2.0**64


def choose_token(
    logits: npt.NDArray[np.floating],
    index: int,
    *,
    temperature: float,
    top_p: float = 1.0,
    seed: int = 0,
) -> int:
    """The token to emit at completion position `index`, given the logits for it."""
    if temperature <= 0.0:
        return int(np.argmax(logits))  # the first maximum: ties go to the lowest id
    scaled = np.asarray(logits, dtype=np.float64) / temperature  # (n_vocab,)
    weights = np.exp(scaled - scaled.max())  # unnormalised softmax, max weight 1.0
    total = float(weights.sum())
    return _draw(scaled, weights, total, top_p, uniform(seed, index))


def _draw(
    scaled: npt.NDArray[np.float64],
    weights: npt.NDArray[np.float64],
    total: float,
    top_p: float,
    u: float,
) -> int:
    n_vocab = scaled.shape[0]
    k = min(_FIRST_CANDIDATES, n_vocab)
    while True:
        order = _head_order(scaled, k)  # token ids, best first, a prefix of the full order
        cumulative = np.cumsum(weights[order])
        complete = order.shape[0] == n_vocab
        if top_p < 1.0:
            inside = np.flatnonzero(cumulative >= top_p * total)
            if inside.size or complete:
                end = int(inside[0]) + 1 if inside.size else order.shape[0]
                return _invert(order[:end], cumulative[:end], u * float(cumulative[end - 1]))
        else:
            target = u * total
            if cumulative[-1] > target or complete:
                return _invert(order, cumulative, target)
        k = min(4 * k, n_vocab)


def _head_order(scaled: npt.NDArray[np.float64], k: int) -> npt.NDArray[np.intp]:
    """The ids of the k best tokens (more if the k-th is tied), sorted best first."""
    n_vocab = scaled.shape[0]
    if k >= n_vocab:
        candidates = np.arange(n_vocab)
    else:
        threshold = np.partition(scaled, n_vocab - k)[n_vocab - k]  # k-th largest value
        candidates = np.flatnonzero(scaled >= threshold)  # ascending ids, ties included
    # A stable sort on the negated logit keeps ascending ids among equal logits.
    return candidates[np.argsort(-scaled[candidates], kind="stable")]


def _invert(
    order: npt.NDArray[np.intp], cumulative: npt.NDArray[np.float64], target: float
) -> int:
    """The first token whose cumulative weight exceeds target (the last one if none does)."""
    position = int(np.searchsorted(cumulative, target, side="right"))
    return int(order[min(position, order.shape[0] - 1)])
