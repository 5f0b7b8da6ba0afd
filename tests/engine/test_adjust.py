"""Sampling controls on the logits (`dinet.engine.adjust`), against their definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dinet.engine.adjust import REPETITION_WINDOW, Adjuster
from dinet.wire.messages import GenerationParams

LOGITS = np.array([2.0, -1.0, 0.5, 3.0, -4.0, 1.0], dtype=np.float32)


def adjusted(prompt: list[int] = (), emitted: list[int] = (), **controls: object) -> np.ndarray:
    params = GenerationParams(prompt="x", **controls)  # type: ignore[arg-type]
    adjuster = Adjuster(params, list(prompt))
    for token in emitted:
        adjuster.push(token)
    return adjuster.logits(LOGITS)


def test_no_control_needs_no_adjuster():
    assert not Adjuster.needed(GenerationParams(prompt="x", temperature=1.0, top_p=0.9))
    assert not Adjuster.needed(GenerationParams(prompt="x", min_p=0.1))  # greedy: min-p changes nothing
    assert Adjuster.needed(GenerationParams(prompt="x", min_p=0.1, temperature=0.7))


def test_logit_bias_adds_to_the_named_tokens():
    assert adjusted(logit_bias=((1, 5.0), (4, -100.0))).tolist() == [2.0, 4.0, 0.5, 3.0, -104.0, 1.0]


def test_repetition_shrinks_the_recent_tokens_of_prompt_and_answer():
    out = adjusted(prompt=[0], emitted=[1], repetition_penalty=2.0)
    assert out.tolist() == [1.0, -2.0, 0.5, 3.0, -4.0, 1.0]
    # Only the last 64 tokens count: token 3 said long ago is forgotten.
    long_ago = adjusted(prompt=[3] + [5] * REPETITION_WINDOW, repetition_penalty=2.0)
    assert long_ago[3] == 3.0 and long_ago[5] == 0.5


def test_presence_and_frequency_count_the_answer_only():
    out = adjusted(prompt=[2], emitted=[0, 0, 3], presence_penalty=0.5, frequency_penalty=0.25)
    assert out.tolist() == [2.0 - 0.5 - 0.5, -1.0, 0.5, 3.0 - 0.5 - 0.25, -4.0, 1.0]


def test_min_p_drops_tokens_far_below_the_best():
    out = adjusted(min_p=0.2, temperature=1.0)
    floor = 3.0 + math.log(0.2)  # a weight exp(l - max) below 0.2
    assert np.array_equal(np.isfinite(out), LOGITS >= floor)
    assert np.isfinite(adjusted(min_p=0.2, temperature=2.0)).sum() > np.isfinite(out).sum()


@pytest.mark.parametrize(
    "bad",
    [{"min_p": 1.0}, {"presence_penalty": 2.5}, {"repetition_penalty": 0.0}, {"logit_bias": ((1, 101.0),)}],
)
def test_out_of_range_controls_are_refused(bad):
    with pytest.raises(ValueError):
        GenerationParams(prompt="x", **bad)


def test_a_verifier_spares_a_claimed_token_just_below_the_min_p_floor():
    params = GenerationParams(prompt="x", min_p=0.2, temperature=1.0)
    floor = 3.0 + math.log(0.2)  # 1.39: token 5 (1.0) lies 0.39 below, token 2 (0.5) 0.89 below
    assert not np.isfinite(Adjuster(params, []).logits(LOGITS)[5])
    assert Adjuster(params, []).logits(LOGITS, spared=5)[5] == 1.0 > floor - 0.75
    assert not np.isfinite(Adjuster(params, []).logits(LOGITS, spared=2)[2])
