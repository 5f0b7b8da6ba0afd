"""What verification tells about a peer, handed to whoever keeps reputations.

The client calls `record_outcome(peer_id, outcome)` once per peer whose tokens were
checked. The reputation store implements `OutcomeRecorder`; the client never needs
to know how scores are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol


@dataclass(frozen=True)
class VerificationOutcome:
    """One peer's share of one verified answer."""

    kind: Literal["verification"]
    passed: bool  # every token this peer produced passed the check
    verifier: str  # peer id of the peer that re-scored it
    model_hash: str
    checked: int  # tokens of this peer that were checked
    bad_positions: tuple[int, ...]  # completion indices of this peer's tokens that failed
    request_id: str


class OutcomeRecorder(Protocol):
    def record_outcome(self, peer_id: str, event: VerificationOutcome) -> None: ...
