"""What this client has seen of each peer: failures and back-off, its own requests in
flight there, and the speed it measured."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from dinet.wire.ids import PeerId

BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 60.0
OWN_REQUESTS_KEPT_S = 120.0  # longer than a manifest lives: older requests of ours are in no advert


@dataclass
class PeerRecord:
    failures: int = 0
    retry_at: float = 0.0  # trio clock; not chosen before this
    observed_tokens_per_s: float | None = None
    observed_at: float = 0.0
    # Our own requests there, (started, ended) in wall-clock seconds (ended: inf while in
    # flight): a peer's advertised load counts them as of when it was issued.
    ours: dict[int, tuple[float, float]] = field(default_factory=dict)
    _sent: int = 0

    def sent(self) -> int:
        """One request of ours starts there: a handle for `done` when it ends."""
        now = time.time()
        self.ours = {h: (a, b) for h, (a, b) in self.ours.items() if b > now - OWN_REQUESTS_KEPT_S}
        self._sent += 1
        self.ours[self._sent] = (now, float("inf"))
        return self._sent

    def done(self, handle: int) -> None:
        started, _ = self.ours[handle]
        self.ours[handle] = (started, time.time())

    @property
    def in_flight(self) -> int:
        """Our requests there that have not ended."""
        return sum(1 for _, ended in self.ours.values() if ended == float("inf"))

    def ours_running_at(self, wall_time: float) -> int:
        return sum(1 for started, ended in self.ours.values() if started <= wall_time <= ended)


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
