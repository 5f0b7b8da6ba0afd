"""Speculative steps through a ring of stages: the first stage guesses by prompt lookup or
with a draft model, the last checks the guesses, and the answer is plain decoding's,
token for token."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tests.engine._engine_helpers import chat

from dinet.engine._paths import gemma_model_path
from dinet.engine.torch._stage import Stage, StageRequestError, check_same_vocabulary
from dinet.engine.torch.shard import LayerSpan, ShardModel
from dinet.errors import UnsupportedModel
from dinet.wire.messages import GenerationParams

COPYING = "Repeat exactly: " + " ".join(["The quick brown fox jumps over the lazy dog."] * 2)


@pytest.fixture(scope="module")
def ring(model_path: Path) -> list[Stage]:
    """Three stages; the first drafts with the whole model's llama.cpp copy when asked to."""
    spans = ((0, 10), (10, 20), (20, 30))
    return [Stage.load(model_path, start, stop, draft=model_path) for start, stop in spans]


def answer(ring: list[Stage], params: GenerationParams, draft: str) -> tuple[list[int], int]:
    """The tokens chosen round the ring as the node's relays pass them, and the steps taken."""
    sessions = [stage.open(params, "f32", draft if k == 0 else "none") for k, stage in enumerate(ring)]  # type: ignore[arg-type]
    x: np.ndarray = np.asarray(sessions[0].prompt_ids, dtype=np.int32).reshape(-1, 1)
    keep, tokens, steps = None, [], 0
    while True:
        out = sessions[0].forward(x, keep=keep)
        guessed = sessions[0].draft_out
        out = sessions[1].forward(out, keep=keep, draft=guessed)
        chosen = sessions[2].forward(out, keep=keep, draft=guessed)
        assert isinstance(chosen, tuple)
        steps += 1
        tokens += [s.token_id for s in chosen]
        if chosen[-1].finish_reason is not None:
            return tokens, steps
        x, keep = np.array([[chosen[-1].token_id]], dtype=np.int32), sessions[2].held


@pytest.mark.parametrize(
    "sampling", [{}, {"temperature": 0.8, "top_p": 0.95, "seed": 7}], ids=["greedy", "seeded"]
)
def test_guessed_tokens_checked_by_the_last_stage_give_plain_decoding_s_answer(ring, sampling) -> None:
    for prompt in (COPYING, "Describe a cat in one sentence."):
        params = chat(prompt, max_tokens=48, **sampling)
        plain, plain_steps = answer(ring, params, "none")
        guessed, steps = answer(ring, params, "lookup")
        assert guessed == plain, prompt
        assert steps <= plain_steps


@pytest.mark.parametrize(
    "sampling", [{}, {"temperature": 0.8, "top_p": 0.95, "seed": 7}], ids=["greedy", "seeded"]
)
def test_a_draft_model_s_guesses_give_plain_decoding_s_answer_in_fewer_steps(ring, sampling) -> None:
    # The draft is llama.cpp on the same Q4_1 file the stages run in torch: two engines'
    # arithmetic, so some greedy guesses still miss; a sampled answer misses more (the
    # draft guesses greedily).
    for prompt in ("Describe a cat in one sentence.", "Write a short poem about the sea."):
        params = chat(prompt, max_tokens=48, **sampling)
        plain, plain_steps = answer(ring, params, "none")
        drafted, steps = answer(ring, params, "model")
        assert drafted == plain, prompt
        assert steps < plain_steps, (steps, plain_steps)
    if not sampling:
        assert steps * 2 <= plain_steps, f"{steps} steps with a draft model, {plain_steps} without"


def test_a_stage_without_a_draft_model_refuses_one_and_another_vocabulary_is_no_draft(
    model_path: Path,
) -> None:
    plain = Stage.load(model_path, 0, 10)
    with pytest.raises(StageRequestError, match="no draft model"):
        plain.open(chat("Hi", max_tokens=8), "f32", "model")
    with pytest.raises(UnsupportedModel, match="another vocabulary"):
        check_same_vocabulary(model_path, gemma_model_path())
    check_same_vocabulary(model_path, model_path)


def test_a_copying_answer_takes_several_tokens_a_step(ring) -> None:
    plain, plain_steps = answer(ring, chat(COPYING, max_tokens=48), "none")
    _, steps = answer(ring, chat(COPYING, max_tokens=48), "lookup")
    assert steps * 2 <= plain_steps, f"{steps} steps with guesses, {plain_steps} without"


def test_speculative_rows_are_bit_for_bit_one_row_steps(model_path: Path) -> None:
    whole = ShardModel.load(model_path, LayerSpan(0, 30), threads=1)
    ids = torch.tensor([1, 504, 3458, 314, 260, 2451, 28, 1303, 2116, 1535, 314], dtype=torch.int64)
    batched, single = whole.new_session(), whole.new_session()
    batched.forward(ids[:6])
    single.forward(ids[:6])
    rows = batched.forward(ids[6:], speculative=True)  # (5, n_embd), normalized
    guessed = torch.stack([whole.logits_of(rows[r : r + 1]) for r in range(len(rows))])
    one_by_one = torch.stack([single.forward(ids[i : i + 1]) for i in range(6, len(ids))])
    assert torch.equal(guessed, one_by_one)


def test_a_step_whose_rows_and_guesses_disagree_or_that_keeps_too_much_is_refused(ring) -> None:
    sessions = [stage.open(chat("Hi", max_tokens=8)) for stage in ring]
    first = sessions[0]
    hidden = first.forward(np.asarray(first.prompt_ids, dtype=np.int32).reshape(-1, 1))
    with pytest.raises(StageRequestError, match="cannot carry"):
        sessions[1].forward(hidden, draft=(5,))  # n rows, one guess: not n - 1
    with pytest.raises(StageRequestError, match="past the"):
        sessions[1].forward(hidden[:1], keep=len(first.prompt_ids) + 5)
