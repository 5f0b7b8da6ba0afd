"""Majority over replicas' token sequences."""

from __future__ import annotations

import itertools

import pytest

from dinet.trust.vote import Ballot, agreed_prefix, tally

HONEST = (10, 11, 12, 13, 14)


def test_the_majority_wins_and_the_liar_dissents():
    result = tally([Ballot("a", HONEST), Ballot("liar", (10, 99, 12, 13, 14)), Ballot("b", HONEST)], 3)
    assert result.winner is not None and result.winner.tokens == HONEST
    assert result.winner.peers == ("a", "b")
    assert result.dissenting == ("liar",)
    assert result.agreed_prefix == 5


def test_the_order_answers_arrive_in_changes_nothing():
    ballots = [Ballot("a", HONEST), Ballot("b", (1, 2)), Ballot("c", HONEST), Ballot("d", (1, 3))]
    results = {tally(list(order), 5) for order in itertools.permutations(ballots)}
    assert len(results) == 1


def test_no_majority_when_every_answer_differs_or_too_few_answered():
    split = tally([Ballot("a", HONEST), Ballot("b", (10, 11, 7)), Ballot("c", (10, 11, 8))], 3)
    assert split.winner is None and split.dissenting == ()
    assert split.agreed_prefix == 2  # all three agree on the first two tokens
    assert len(split.groups) == 3
    # Two of four agreeing is not more than half; one answer of three asked is not either.
    half = [Ballot("a", HONEST), Ballot("b", HONEST), Ballot("c", (1,)), Ballot("d", (2,))]
    assert tally(half, 4).winner is None
    lonely = tally([Ballot("a", HONEST)], 3)
    assert lonely.winner is None and lonely.agreed_prefix == 0
    # Two agreeing of three asked (one failed) is a majority.
    assert tally([Ballot("a", HONEST), Ballot("b", HONEST)], 3).winner is not None


def test_agreed_prefix_follows_the_majority_past_a_shorter_answer():
    assert agreed_prefix([Ballot("a", (1, 2, 3)), Ballot("b", (1, 2, 3, 4)), Ballot("c", (1, 2))], 3) == 3
    assert agreed_prefix([Ballot("a", ()), Ballot("b", ())], 2) == 0
    assert agreed_prefix([Ballot("a", (5,)), Ballot("b", (6,))], 2) == 0


def test_malformed_votes_are_refused():
    with pytest.raises(ValueError):
        tally([Ballot("a", HONEST), Ballot("a", HONEST)], 3)
    with pytest.raises(ValueError):
        tally([Ballot("a", HONEST), Ballot("b", HONEST)], 1)
