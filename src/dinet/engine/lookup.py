"""Prompt lookup: draft the next tokens by finding the context's latest n-gram earlier in it.

Answers that copy from their prompt (a summary quoting it, code edited in place, a list
read back) repeat long runs of the prompt's tokens: where the last few tokens occurred
before, the tokens that followed them there are a good guess at what follows now. A
chain checks such a guess in one trip round its stages (`docs/sharding.md`), so each
right guess saves a trip; a wrong one costs only the extra rows of one step.

The number of tokens drafted follows how often the guesses were right: up after a
draft taken whole, halved after one refused at its first token.
"""

from __future__ import annotations

from collections.abc import Sequence

MAX_NGRAM = 3  # the longest tail looked up; longer ones rarely find a match at all
MIN_NGRAM = 1
FIRST_DRAFT = 4
MAX_DRAFT = 8  # rows added to a step; wire/shard.py's MAX_DRAFT_TOKENS bounds it too
LOOKBACK = 4096  # tokens searched, from the end: the context, for the models served here


class AdaptiveDraft:
    """How many tokens to draft next: up after a draft taken whole, halved after one
    refused at its first token."""

    def __init__(self, max_draft: int = MAX_DRAFT) -> None:
        self.max_draft = max_draft
        self.size = min(FIRST_DRAFT, max_draft)

    def taken(self, drafted: int, accepted: int) -> None:
        """Adjust the draft size after `accepted` of `drafted` tokens were taken."""
        if drafted == 0:
            return
        if accepted == drafted:
            self.size = min(self.max_draft, self.size + 2)
        elif accepted == 0:
            self.size = max(1, self.size // 2)


class PromptLookup(AdaptiveDraft):
    """Drafts for one sequence, and how many to make next."""

    def propose(self, tokens: Sequence[int], room: int) -> list[int]:
        """Up to `self.size` (and `room`) tokens to follow `tokens`; [] when no n-gram matches."""
        limit = min(self.size, room)
        if limit <= 0:
            return []
        window = list(tokens[-LOOKBACK:])
        for n in range(MAX_NGRAM, MIN_NGRAM - 1, -1):
            if len(window) <= n:
                continue
            tail = window[-n:]
            for start in range(len(window) - n - 1, -1, -1):  # the latest match first
                if window[start : start + n] == tail:
                    return window[start + n : start + n + limit]
        return []
