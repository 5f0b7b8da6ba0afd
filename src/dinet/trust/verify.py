"""Judging a re-scored answer: pure, no I/O.

    verdict = judge(scores.positions, temperature=0.0, top_p=1.0, seed=0)
    verdict.ok, verdict.bad_positions

Decoding is deterministic (`dinet.engine.sampler`), so an honest claimed token is
the one the verifier's own logits would give, up to floating-point noise:

- greedy: the claimed token is the arg-max. Allowed: a claimed token whose log-prob
  is within `greedy_gap` of the best one (noise can swap near-ties).
- sampled: the claimed token's draw interval [lo, hi) under the verifier's logits
  should hold u = uniform(seed, index). Noise in the logits scales the odds of the mass
  before (and after) a token, so each position's miss is measured in log-odds
  (`draw_excess`: how far logit(u) lies outside [logit(lo), logit(hi)]), and the
  answer is judged by the SUM of its misses against `sample_logodds`: honest noise
  gives a rare single miss, a wrong model misses a little at many positions. Noise
  can also swap two near-tied tokens in the sampler's order, moving the claimed
  token's interval by the other's whole mass: so a token whose log-prob is within
  `greedy_gap` of the token the verifier itself draws counts as no miss.

Under a grammar (structured outputs) the verifier scores the logits the grammar
leaves, so both rules apply unchanged; a claimed token the grammar refuses fails at
once, whatever its scores. A claimed log-probability (`logprobs`) fails when it lies
more than `logprob_gap` from the verifier's own.

A random token sits deep in the tail (lo ~ 1, log-odds ~ 10 and more), a wrong
model's token far from the draw: both are caught by margins that honest noise never
reaches.

The tolerances are measured (bench/verify.py prints the margins; see below).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from dinet.engine.sampler import uniform
from dinet.wire.verify import PositionScore


@dataclass(frozen=True)
class Tolerances:
    # Measured on SmolLM2-135M (served Q4_1, decoded step by step on 1 thread; scored in
    # one batched prefill on 2 threads on the BF16 copy; 25-200 requests of 8-12 tokens,
    # tests/trust/test_liars.py): greedy, the claimed token was the verifier's arg-max
    # but for rare near-ties, the largest gap 0.30 nats (0.09-0.15 on 128-token answers
    # scored in Q4_1, F16, Q8_0 or BF16 on 1 thread); sampled, u fell outside the exact
    # interval by up to 2.5 in log-odds once in 25 answers: a near-tie swap (hence the
    # drawn-token rule); otherwise logit noise of ~0.3 nats moves the odds by ~0.3/T.
    # A random token's gap is typically 10-29 nats, a wrong model's 1-5 at its first
    # divergence; at temperature 1 a wrong model's sampled tokens missed the draw by
    # 0.6-1.7 in log-odds (2.0 let one of 25 wrong-model answers through).
    # In-process, 100 more honest answers (Q4_1 on 1 thread vs BF16 on 2): greedy gap at
    # most 0.22; the draw missed the exact interval at 108 of 584 sampled positions, by
    # at most 1.55, and the 3 misses above 1.2 were all near-ties of the verifier's draw.
    # Per answer, not per position (measured on 240 sampled answers of 8-12 tokens, honest
    # Q4_1 on 1 thread vs a wrong model with 4 of 30 layers off, both judged against the
    # BF16 copy on 2 threads): the largest honest total miss was 2.25 (one position),
    # the next 0.66; a per-position limit of 1.2 flagged 1 honest answer in 240, one of
    # 2.5 let 7 wrong-model answers through, a total of 3.0 flagged no honest answer
    # and caught 239 of 240 wrong-model ones.
    greedy_gap: float = 0.75
    sample_logodds: float = 3.0  # the most total miss of the draws over a sampled answer
    # A claimed log-probability against the verifier's: the same logit noise as greedy_gap
    # (tests/engine/llama/test_logprobs.py prints the honest gaps it sees).
    logprob_gap: float = 0.75


DEFAULT_TOLERANCES = Tolerances()


@dataclass(frozen=True)
class Verdict:
    ok: bool
    bad_positions: tuple[int, ...]  # completion indices that fail the check
    checked: int  # positions judged
    worst_margin: float  # greedy: the largest gap; sampled: the total miss (0.0: exact everywhere)


def judge(
    positions: Sequence[PositionScore],
    *,
    temperature: float,
    top_p: float,
    seed: int,
    tolerances: Tolerances = DEFAULT_TOLERANCES,
    claimed_logprobs: Sequence[float | None] | None = None,
) -> Verdict:
    """Whether every claimed token is plausible under the verifier's scores, and every
    claimed log-probability (one per position, None where none was claimed) near the
    verifier's own."""
    del top_p  # already inside lo/hi, which the verifier computed with it
    verdict = _judge_scores(positions, temperature, seed, tolerances)
    refused = {p.index for p in positions if not p.allowed}
    if claimed_logprobs is not None:
        refused |= {
            p.index
            for p, claimed in zip(positions, claimed_logprobs, strict=False)
            if claimed is not None and abs(claimed - p.logprob) > tolerances.logprob_gap
        }
    if not refused:
        return verdict
    bad = tuple(sorted(refused.union(verdict.bad_positions)))
    return Verdict(ok=False, bad_positions=bad, checked=verdict.checked, worst_margin=verdict.worst_margin)


def _judge_scores(
    positions: Sequence[PositionScore], temperature: float, seed: int, tolerances: Tolerances
) -> Verdict:
    if temperature <= 0.0:
        gaps = [(p.index, p.best_logprob - p.logprob) for p in positions]
        bad = tuple(i for i, gap in gaps if gap > tolerances.greedy_gap)
        worst = max((gap for _, gap in gaps), default=0.0)
        return Verdict(ok=not bad, bad_positions=bad, checked=len(positions), worst_margin=worst)
    misses = []
    for position in positions:
        miss = draw_excess(position, uniform(seed, position.index))
        if miss > 0.0 and _near_tie_of_draw(position, tolerances.greedy_gap):
            miss = 0.0  # a swap of near-ties in the sampler's order: plausible
        misses.append((position.index, miss))
    total = sum(miss for _, miss in misses)
    bad = tuple(i for i, miss in misses if miss > 0.0) if total > tolerances.sample_logodds else ()
    return Verdict(ok=not bad, bad_positions=bad, checked=len(positions), worst_margin=total)


def draw_excess(position: PositionScore, u: float) -> float:
    """How far (in log-odds) u lies outside the claimed token's draw interval; 0 inside."""
    if position.lo is None or position.hi is None:
        return math.inf  # a sampled claim needs its interval
    if position.lo >= 1.0:
        return math.inf  # outside the nucleus altogether
    below = _logit(position.lo) - _logit(u) if position.lo > 0.0 else -math.inf
    above = _logit(u) - _logit(position.hi) if position.hi < 1.0 else -math.inf
    return max(0.0, below, above)


def _near_tie_of_draw(position: PositionScore, gap: float) -> bool:
    drawn = position.drawn_logprob
    return drawn is not None and abs(drawn - position.logprob) <= gap


def _logit(x: float) -> float:
    x = min(max(x, 1e-300), 1.0 - 1e-16)
    return math.log(x) - math.log1p(-x)
