"""The one interface of the ways to answer a request: a whole-model peer, or a chain of stages.

`ask()` picks a strategy, iterates `run(deadline)` (token frames, then one Finished), and
does everything else itself: timing, verification, the Answer. A strategy reports what
its peers did to the request's `Records`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from dinet.wire.ids import ModelHash, PeerId
from dinet.wire.messages import GenerationParams, TokenFrame, Usage

if TYPE_CHECKING:
    from dinet.client.stage_audit import StageCheck


@dataclass(frozen=True)
class Finished:
    """How an answer ended: what an Answer needs beyond its tokens."""

    peer_id: PeerId  # the peer that sent the last token (a chain's last stage)
    model_id: str
    model_hash: ModelHash
    usage: Usage
    finish_reason: str
    peers_tried: tuple[PeerId, ...]
    params: GenerationParams  # as asked in the end (max_tokens capped by a deadline)
    max_tokens_capped: int | None = None  # set when a deadline lowered max_tokens
    chain: tuple[PeerId, ...] = ()  # the stages of the final chain, in order (empty: one whole node)
    stage_check: StageCheck | None = None  # the chain's receipts and audits


class Strategy(Protocol):
    def run(self, deadline: float) -> AsyncGenerator[TokenFrame | Finished, None]:
        """Each completion token as it arrives, then one Finished; AnswerTimedOut once the
        trio clock passes `deadline`, NoCapablePeer when no peer (or chain) is left."""
        ...
