"""The constrained sampler (`Sampler.choose_allowed`): the token `choose` gives once every
refused token's logit is -inf, found by asking the constraint about the head of the
order only."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dinet.engine.sampler import NothingAllowed, Sampler

N_VOCAB = 2048


class Asked:
    """A constraint allowing a fixed set of tokens, counting the tokens it was asked about."""

    def __init__(self, allowed: np.ndarray) -> None:
        self.mask = allowed
        self.asked = 0

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        self.asked += ids.shape[0]
        return self.mask[ids]


def masked(logits: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.where(mask, logits, -np.inf).astype(np.float32)


@settings(max_examples=300, deadline=None)
@given(
    data_seed=st.integers(0, 2**32 - 1),
    allowed_share=st.sampled_from([0.001, 0.01, 0.2, 0.9]),
    temperature=st.sampled_from([0.0, 0.3, 0.7, 1.0, 1.5]),
    top_p=st.sampled_from([1.0, 0.95, 0.5]),
    seed=st.integers(0, 2**63 - 1),
    index=st.integers(0, 4095),
    spread=st.sampled_from([0.5, 3.0, 10.0]),
)
def test_the_choice_is_the_one_of_the_masked_logits(
    data_seed, allowed_share, temperature, top_p, seed, index, spread
):
    rng = np.random.default_rng(data_seed)
    logits = (rng.standard_normal(N_VOCAB) * spread).astype(np.float32)
    mask = rng.random(N_VOCAB) < allowed_share
    mask[rng.integers(N_VOCAB)] = True  # at least one
    sampler = Sampler(N_VOCAB)
    expected = sampler.choose(masked(logits, mask), index, temperature=temperature, top_p=top_p, seed=seed)
    got = sampler.choose_allowed(logits, index, Asked(mask), temperature=temperature, top_p=top_p, seed=seed)
    assert got == expected and mask[got]


def test_ties_among_allowed_tokens_go_to_the_lowest_id():
    logits = np.zeros(N_VOCAB, dtype=np.float32)
    logits[[3, 40, 41]] = 5.0
    mask = np.zeros(N_VOCAB, dtype=bool)
    mask[[41, 40, 7]] = True
    assert Sampler(N_VOCAB).choose_allowed(logits, 0, Asked(mask), temperature=0.0) == 40


def test_a_constraint_that_allows_the_likely_tokens_is_asked_about_few():
    """A language model's distribution is peaked: a few tokens hold nearly all the weight."""
    rng = np.random.default_rng(1)
    logits = rng.standard_normal(N_VOCAB).astype(np.float32)
    logits[rng.choice(N_VOCAB, 8, replace=False)] += 12.0
    mask = np.ones(N_VOCAB, dtype=bool)
    greedy, sampled = Asked(mask), Asked(mask)
    sampler = Sampler(N_VOCAB)
    sampler.choose_allowed(logits, 0, greedy, temperature=0.0)
    sampler.choose_allowed(logits, 0, sampled, temperature=1.0, seed=5)
    assert greedy.asked == 1
    assert sampled.asked < N_VOCAB // 10


def test_a_constraint_allowing_nothing_is_an_error():
    logits = np.zeros(N_VOCAB, dtype=np.float32)
    nothing = Asked(np.zeros(N_VOCAB, dtype=bool))
    for temperature in (0.0, 1.0):
        with pytest.raises(NothingAllowed):
            Sampler(N_VOCAB).choose_allowed(logits, 0, nothing, temperature=temperature)
