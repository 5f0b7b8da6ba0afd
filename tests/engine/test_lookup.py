"""Prompt lookup: the guesses follow the context's latest earlier n-gram, and their number
follows how many were taken."""

from __future__ import annotations

from dinet.engine.lookup import FIRST_DRAFT, PromptLookup


def test_the_tokens_after_the_latest_match_of_the_longest_tail_are_guessed() -> None:
    lookup = PromptLookup()
    #          a  b  c  d  e  |  x  b  c  y  |  b  c
    context = [1, 2, 3, 4, 5, 9, 2, 3, 7, 8, 2, 3]
    # The tail (2, 3) last occurred at 6..7: what followed it there comes first.
    assert lookup.propose(context, room=10) == [7, 8, 2, 3][:FIRST_DRAFT]
    # A longer tail wins over a later match of a shorter one.
    assert lookup.propose([5, 6, 7, 1, 7, 9, 5, 6, 7], room=10) == [1, 7, 9, 5]


def test_no_match_no_guess_and_never_past_the_room_left() -> None:
    lookup = PromptLookup()
    assert lookup.propose([1, 2, 3, 4], room=10) == []
    assert lookup.propose([], room=10) == []
    assert lookup.propose([1, 2, 3, 1, 2], room=1) == [3]
    assert lookup.propose([1, 2, 3, 1, 2], room=0) == []


def test_the_number_of_guesses_follows_how_many_are_taken() -> None:
    lookup = PromptLookup(max_draft=8)
    assert lookup.size == FIRST_DRAFT
    lookup.taken(drafted=4, accepted=4)
    lookup.taken(drafted=6, accepted=6)
    assert lookup.size == 8  # taken whole: more, up to the most
    lookup.taken(drafted=8, accepted=3)
    assert lookup.size == 8  # partly taken: unchanged
    lookup.taken(drafted=8, accepted=0)
    lookup.taken(drafted=4, accepted=0)
    lookup.taken(drafted=2, accepted=0)
    lookup.taken(drafted=1, accepted=0)
    assert lookup.size == 1  # refused at once: halved, never below one
    lookup.taken(drafted=0, accepted=0)
    assert lookup.size == 1
