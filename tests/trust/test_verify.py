"""The judge of re-scored answers, on hand-made scores (pure, no model)."""

from __future__ import annotations

import math

import pytest

from dinet.engine.sampler import uniform
from dinet.trust.verify import Tolerances, draw_excess, judge
from dinet.wire.verify import PositionScore


def greedy(index: int, gap: float, rank: int = 1) -> PositionScore:
    return PositionScore(
        index=index, token_id=7, rank=0 if gap == 0 else rank, logprob=-0.5 - gap, best_logprob=-0.5
    )


def sampled(index: int, lo: float, hi: float) -> PositionScore:
    return PositionScore(index=index, token_id=7, rank=3, logprob=-2.0, best_logprob=-0.5, lo=lo, hi=hi)


def test_greedy_accepts_the_argmax_and_near_ties_only() -> None:
    tolerances = Tolerances(greedy_gap=1.0, sample_logodds=2.0)
    verdict = judge(
        [greedy(0, 0.0), greedy(1, 0.4), greedy(2, 1.2), greedy(3, 12.0)],
        temperature=0.0,
        top_p=1.0,
        seed=0,
        tolerances=tolerances,
    )
    assert not verdict.ok
    assert verdict.bad_positions == (2, 3)
    assert verdict.checked == 4
    assert verdict.worst_margin == pytest.approx(12.0)
    assert judge(
        [greedy(0, 0.0), greedy(1, 0.9)], temperature=0.0, top_p=1.0, seed=0, tolerances=tolerances
    ).ok


def test_sampled_checks_the_draw_against_the_claimed_interval() -> None:
    seed = 11
    u = [uniform(seed, i) for i in range(3)]
    honest = [sampled(i, max(0.0, x - 0.01), min(1.0, x + 0.01)) for i, x in enumerate(u)]
    assert judge(honest, temperature=0.8, top_p=0.9, seed=seed).ok
    assert judge(honest, temperature=0.8, top_p=0.9, seed=seed).worst_margin == 0.0
    # The same intervals under another seed: the draws fall elsewhere.
    assert not judge(honest, temperature=0.8, top_p=0.9, seed=seed + 1).ok


def test_sampled_tolerance_is_in_log_odds() -> None:
    # A token at the far tail (a random token): only u within a hair of 1 would pick it.
    tail = sampled(0, 1.0 - 1e-6, 1.0 - 1e-7)
    assert draw_excess(tail, 0.5) > 10
    assert draw_excess(tail, 0.99) > 5
    # Noise: u just past the edge of a wide interval costs little.
    edge = sampled(0, 0.2, 0.6)
    assert 0 < draw_excess(edge, 0.62) < 0.1
    assert draw_excess(edge, 0.4) == 0.0
    assert draw_excess(sampled(0, 1.0, 1.0), 0.999) == math.inf  # outside the nucleus


def test_sampled_claim_without_an_interval_fails() -> None:
    bare = PositionScore(index=0, token_id=1, rank=0, logprob=-0.1, best_logprob=-0.1)
    assert not judge([bare], temperature=1.0, top_p=1.0, seed=0).ok


def test_nothing_claimed_is_trivially_plausible() -> None:
    verdict = judge([], temperature=0.0, top_p=1.0, seed=0)
    assert verdict.ok and verdict.checked == 0


def test_a_near_tie_of_the_verifiers_own_draw_passes() -> None:
    u = uniform(3, 0)
    far = (0.0, 1e-9) if u > 0.5 else (1.0 - 1e-9, 1.0 - 1e-12)  # an interval nowhere near u
    swapped = PositionScore(
        index=0, token_id=7, rank=1, logprob=-1.0, best_logprob=-0.9, lo=far[0], hi=far[1], drawn_logprob=-0.9
    )
    assert judge([swapped], temperature=0.8, top_p=1.0, seed=3).ok
    unrelated = swapped.model_copy(update={"drawn_logprob": -4.0})
    assert not judge([unrelated], temperature=0.8, top_p=1.0, seed=3).ok
