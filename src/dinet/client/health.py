"""What this client has seen of each peer: failures and back-off, its own requests in
flight there, and the speed it measured."""

from __future__ import annotations

from dataclasses import dataclass

from dinet.wire.ids import PeerId

BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 60.0


@dataclass
class PeerRecord:
    failures: int = 0
    retry_at: float = 0.0  # trio clock; not chosen before this
    in_flight: int = 0
    observed_tokens_per_s: float | None = None
    observed_at: float = 0.0


class HealthBook:
    """Per-peer client-side state, keyed by peer id. Times are trio clock seconds."""

    def __init__(self, base_s: float = BACKOFF_BASE_S, cap_s: float = BACKOFF_CAP_S) -> None:
        self._base = base_s
        self._cap = cap_s
        self._peers: dict[PeerId, PeerRecord] = {}

    def get(self, peer_id: PeerId) -> PeerRecord:
        return self._peers.setdefault(peer_id, PeerRecord())

    def usable(self, peer_id: PeerId, now: float) -> bool:
        return self.get(peer_id).retry_at <= now

    def failed(self, peer_id: PeerId, now: float) -> float:
        """Back the peer off, exponentially with a cap; returns the back-off in seconds."""
        record = self.get(peer_id)
        record.failures += 1
        wait = min(self._cap, self._base * 2 ** (record.failures - 1))
        record.retry_at = now + wait
        return wait

    def answered(self, peer_id: PeerId) -> None:
        """It answered a probe or a request: forgive its past failures."""
        record = self.get(peer_id)
        record.failures = 0
        record.retry_at = 0.0

    def measured(self, peer_id: PeerId, tokens_per_s: float, now: float) -> None:
        record = self.get(peer_id)
        record.observed_tokens_per_s = tokens_per_s
        record.observed_at = now
