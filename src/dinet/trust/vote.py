"""Majority over replicas' answers: pure, no I/O.

Honest peers decode deterministically (greedy, or sampled with a draw keyed by seed
and position), so the same model, prompt and seed give the same token ids on each:
votes compare exact token sequences, never text (two token sequences can spell one
text).

Floating-point noise can still split honest peers: llama.cpp's sums differ with
thread counts and CPU features, and where two candidates' logits nearly tie, peers
may pick different tokens and continue differently from there. A vote therefore also
reports how far a majority agrees (`agreed_prefix`) and every distinct answer, so
that the caller can let verification by re-scoring decide instead of punishing an
honest peer for a near-tie (see `dinet.client.vote`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dinet.wire.ids import PeerId


@dataclass(frozen=True)
class Ballot:
    """One replica's complete answer."""

    peer_id: PeerId
    tokens: tuple[int, ...]


@dataclass(frozen=True)
class Group:
    """Replicas that gave the same token sequence."""

    tokens: tuple[int, ...]
    peers: tuple[PeerId, ...]


@dataclass(frozen=True)
class Tally:
    asked: int  # replicas asked, answered or not: a majority is more than half of them
    groups: tuple[Group, ...]  # distinct answers, most supported first
    agreed_prefix: int  # leading tokens on which a majority of `asked` agrees

    @property
    def winner(self) -> Group | None:
        """The answer more than half of the replicas asked gave, if one did."""
        if self.groups and 2 * len(self.groups[0].peers) > self.asked:
            return self.groups[0]
        return None

    @property
    def dissenting(self) -> tuple[PeerId, ...]:
        """Peers that answered something other than the winner (none without a winner)."""
        if self.winner is None:
            return ()
        return tuple(p for g in self.groups[1:] for p in g.peers)


def tally(ballots: Sequence[Ballot], asked: int) -> Tally:
    """Group the answers and find the majority, if any.

    Groups are ordered by support, then by their first peer id, so the result does
    not depend on the order answers arrived in.
    """
    if asked < len(ballots):
        raise ValueError(f"{len(ballots)} ballots from {asked} replicas asked")
    if len({b.peer_id for b in ballots}) != len(ballots):
        raise ValueError("a peer voted twice")
    by_tokens: dict[tuple[int, ...], list[PeerId]] = {}
    for b in ballots:
        by_tokens.setdefault(b.tokens, []).append(b.peer_id)
    groups = sorted(
        (Group(t, tuple(sorted(p))) for t, p in by_tokens.items()), key=lambda g: (-len(g.peers), g.peers[0])
    )
    return Tally(asked, tuple(groups), agreed_prefix(ballots, asked))


def agreed_prefix(ballots: Sequence[Ballot], asked: int) -> int:
    """The longest prefix that more than half of `asked` replicas share."""
    agreeing = list(ballots)  # invariant: a majority, all sharing tokens[:length]
    if 2 * len(agreeing) <= asked:
        return 0
    length = 0
    while True:
        following: dict[int, list[Ballot]] = {}
        for b in agreeing:
            if len(b.tokens) > length:
                following.setdefault(b.tokens[length], []).append(b)
        best = max(following.values(), key=len, default=[])
        if 2 * len(best) <= asked:
            return length
        agreeing = best
        length += 1
