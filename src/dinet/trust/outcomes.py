"""What verification tells about a peer, handed to whoever keeps reputations.

The client calls `record_outcome(peer_id, outcome)` once per peer whose tokens were
checked. The reputation store implements `OutcomeRecorder`; the client never needs
to know how scores are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from dinet.wire.ids import ModelHash, PeerId, RequestId


@dataclass(frozen=True)
class VerificationOutcome:
    """One peer's share of one verified answer."""

    kind: Literal["verification"]
    passed: bool  # every token this peer produced passed the check
    verifier: PeerId  # the peer that re-scored it
    model_hash: ModelHash
    checked: int  # tokens of this peer that were checked
    bad_positions: tuple[int, ...]  # completion indices of this peer's tokens that failed
    request_id: RequestId


class OutcomeRecorder(Protocol):
    def record_outcome(self, peer_id: PeerId, event: VerificationOutcome) -> None: ...
