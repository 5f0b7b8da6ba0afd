"""The deterministic sampler, against a plain full-sort reference."""

from __future__ import annotations

import numpy as np
import pytest

from dinet.engine.sampler import Sampler, choose_token, uniform

N_VOCAB = 4096


def reference_choice(logits: np.ndarray, index: int, temperature: float, top_p: float, seed: int):
    """The sampler's definition, written the slow and obvious way."""
    scaled = logits.astype(np.float64) / temperature
    order = sorted(range(len(scaled)), key=lambda i: (-scaled[i], i))
    weights = np.exp(scaled - scaled.max())
    sorted_weights = weights[order]
    cumulative = np.cumsum(sorted_weights)
    if top_p < 1.0:
        end = int(np.flatnonzero(cumulative >= top_p * weights.sum())[0]) + 1
        cumulative = cumulative[:end]
        target = uniform(seed, index) * cumulative[-1]
    else:
        target = uniform(seed, index) * weights.sum()
    position = min(int(np.searchsorted(cumulative, target, side="right")), len(cumulative) - 1)
    return order[position]


def test_uniform_depends_only_on_seed_and_index() -> None:
    assert uniform(7, 3) == uniform(7, 3)
    draws = {uniform(seed, index) for seed in range(20) for index in range(50)}
    assert len(draws) == 1000
    assert all(0.0 <= u < 1.0 for u in draws)
    assert 0.45 < float(np.mean(list(draws))) < 0.55


def test_greedy_takes_the_first_maximum() -> None:
    logits = np.zeros(N_VOCAB, dtype=np.float32)
    logits[[17, 5, 900]] = 3.0
    assert choose_token(logits, 0, temperature=0.0) == 5
    assert choose_token(logits, 9, temperature=0.0, seed=123) == 5


@pytest.mark.parametrize(
    ("spread", "temperature", "top_p"),
    [(8.0, 0.7, 1.0), (8.0, 1.0, 0.9), (2.0, 1.5, 0.95), (0.5, 2.0, 1.0), (3.0, 1.0, 0.5)],
)
def test_matches_the_full_sort_reference(spread: float, temperature: float, top_p: float) -> None:
    rng = np.random.default_rng(int(spread * 100 + temperature * 10))
    logits = (rng.standard_normal(N_VOCAB) * spread).astype(np.float32)
    logits[rng.integers(0, N_VOCAB, 40)] = logits.max()  # ties at the top
    sampler = Sampler(N_VOCAB)
    for index in range(40):
        expected = reference_choice(logits, index, temperature, top_p, seed=11)
        got = sampler.choose(logits, index, temperature=temperature, top_p=top_p, seed=11)
        assert got == expected


def test_logits_are_divided_by_the_temperature_in_float64() -> None:
    # Near a boundary of the draw, found by search: float32 division (the quotient and the
    # temperature rounded to float32) gives token 0 here, float64 division token 1.
    logits = np.array([0.0, -0.2769584059715271], dtype=np.float32)
    assert reference_choice(logits, 5, 0.7, 1.0, seed=0) == 1
    assert choose_token(logits, 5, temperature=0.7, seed=0) == 1
    assert choose_token(logits.astype(np.float64), 5, temperature=0.7, seed=0) == 1


def test_ties_are_broken_by_token_id_not_memory_order() -> None:
    logits = np.zeros(N_VOCAB, dtype=np.float32)
    logits[[3000, 10, 2000]] = 5.0
    # top_p small enough that only the first of the tied tokens is in the nucleus.
    picks = {choose_token(logits, i, temperature=1.0, top_p=0.01, seed=1) for i in range(30)}
    assert picks == {10}


def test_seed_and_index_change_the_draw() -> None:
    logits = np.zeros(N_VOCAB, dtype=np.float32)  # uniform over the vocabulary
    sampler = Sampler(N_VOCAB)
    run_a = [sampler.choose(logits, i, temperature=1.0, seed=1) for i in range(20)]
    run_b = [sampler.choose(logits, i, temperature=1.0, seed=2) for i in range(20)]
    assert run_a == [sampler.choose(logits, i, temperature=1.0, seed=1) for i in range(20)]
    assert run_a != run_b
    assert len(set(run_a)) > 15


def test_draws_follow_the_distribution() -> None:
    logits = np.full(N_VOCAB, -50.0, dtype=np.float32)
    logits[:3] = np.log([0.5, 0.3, 0.2])
    sampler = Sampler(N_VOCAB)
    picks = np.array([sampler.choose(logits, i, temperature=1.0, seed=5) for i in range(3000)])
    assert set(np.unique(picks)) <= {0, 1, 2}
    shares = np.bincount(picks, minlength=3)[:3] / len(picks)
    assert np.allclose(shares, [0.5, 0.3, 0.2], atol=0.04)


def test_top_p_keeps_the_smallest_sufficient_nucleus() -> None:
    logits = np.full(N_VOCAB, -50.0, dtype=np.float32)
    logits[:3] = np.log([0.5, 0.3, 0.2])
    sampler = Sampler(N_VOCAB)
    picks = {sampler.choose(logits, i, temperature=1.0, top_p=0.8, seed=2) for i in range(500)}
    assert picks == {0, 1}  # 0.5 + 0.3 reaches 0.8: token 2 is outside
