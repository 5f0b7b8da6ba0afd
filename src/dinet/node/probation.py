"""Newcomers' requests kept small: a node's side of probation.

A client has standing at this node once `receipts_needed` countersigned receipts stand
between them (answers it took and countersigned here, or answers it gave this node).
Until then a request may ask at most `max_tokens` tokens; a larger one is refused with
the typed error `probation` (whose message names the limit), so a new peer id buys
little work before it has settled anything. Nothing is clamped: the client asks
another peer, or asks again for less.

    probation = ClientProbation.from_ledger(ledger, node_peer_id, receipts_needed=3, max_tokens=1024)
    why = probation.refusal(client, params)  # None: serve it
    probation.settled(client)                # after each countersigned receipt

Counts start from the ledger when the node starts, then follow the receipts it
settles; no I/O after that.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from dinet.ledger import Ledger
from dinet.wire.ids import PeerId
from dinet.wire.messages import GenerationParams


class ClientProbation:
    def __init__(
        self, receipts_needed: int, max_tokens: int, history: Mapping[PeerId, int] | None = None
    ) -> None:
        self.receipts_needed = receipts_needed
        self.max_tokens = max_tokens
        self._receipts: Counter[PeerId] = Counter(history or {})

    @classmethod
    def from_ledger(
        cls, ledger: Ledger, me: PeerId, *, receipts_needed: int, max_tokens: int
    ) -> ClientProbation:
        """Counts from the receipts between `me` and each peer in the ledger (blocking: at start)."""
        accounts = ledger.summary([me]).peers
        return cls(receipts_needed, max_tokens, {a.peer_id: a.receipts for a in accounts})

    def has_standing(self, client: PeerId) -> bool:
        return self._receipts[client] >= self.receipts_needed

    def settled(self, client: PeerId) -> None:
        """One more countersigned receipt between the client and this node."""
        self._receipts[client] += 1

    def refusal(self, client: PeerId, params: GenerationParams) -> str | None:
        """Why this request is too large for a client on probation here; None to serve it."""
        asked = params.max_tokens - len(params.prefix_tokens)
        if asked <= self.max_tokens or self.has_standing(client):
            return None
        return (
            f"max_tokens {asked} above the {self.max_tokens} a client without standing here may ask "
            f"({self._receipts[client]} of {self.receipts_needed} settled receipts)"
        )
