"""Per-peer limits on /dinet/infer/1, and bounds on what one request may ask.

Pure: no I/O, and the caller passes the clock (`trio.current_time()` in the node),
so a test drives the limiter with made-up times.

Each peer has a token bucket (`rate` requests per second, up to `burst` at once)
and a cap on its streams in progress. A peer over either limit is refused at once;
the others keep their share of the node. The table of peers is bounded: idle peers
whose bucket has refilled are forgotten first, and when every entry is in use a new
peer is refused rather than the table growing.
"""

from __future__ import annotations

from dataclasses import dataclass

from dinet.wire.messages import GenerationParams

MAX_TRACKED_PEERS = 4096


@dataclass
class _Bucket:
    tokens: float
    updated: float
    active: int = 0


class PeerLimiter:
    def __init__(
        self, rate: float, burst: int, concurrency: int, max_peers: int = MAX_TRACKED_PEERS
    ) -> None:
        if rate <= 0 or burst < 1 or concurrency < 1 or max_peers < 1:
            raise ValueError("rate, burst, concurrency and max_peers must be positive")
        self._rate = rate
        self._burst = float(burst)
        self._concurrency = concurrency
        self._max_peers = max_peers
        self._peers: dict[str, _Bucket] = {}

    @property
    def tracked(self) -> int:
        return len(self._peers)

    def acquire(self, peer: str, now: float) -> str | None:
        """Take one request's worth for `peer`: None if allowed (call `release` when
        done), else the reason it is refused."""
        bucket = self._peers.get(peer)
        if bucket is None:
            if len(self._peers) >= self._max_peers:
                self._forget_idle(now)
            if len(self._peers) >= self._max_peers:
                return f"tracking {self._max_peers} peers already"
            bucket = self._peers[peer] = _Bucket(self._burst, now)
        bucket.tokens = min(self._burst, bucket.tokens + max(0.0, now - bucket.updated) * self._rate)
        bucket.updated = max(bucket.updated, now)
        if bucket.active >= self._concurrency:
            return f"{bucket.active} requests of this peer in progress (limit {self._concurrency})"
        if bucket.tokens < 1.0:
            return f"more than {self._rate:g} requests/s (burst {self._burst:g}) from this peer"
        bucket.tokens -= 1.0
        bucket.active += 1
        return None

    def release(self, peer: str) -> None:
        bucket = self._peers.get(peer)
        if bucket is not None and bucket.active > 0:
            bucket.active -= 1

    def _forget_idle(self, now: float) -> None:
        for peer, bucket in list(self._peers.items()):
            refilled = bucket.tokens + max(0.0, now - bucket.updated) * self._rate >= self._burst
            if bucket.active == 0 and refilled:
                del self._peers[peer]


@dataclass(frozen=True)
class RequestBounds:
    """What one request may ask of this node, within the protocol's own caps."""

    max_tokens: int
    max_prompt_chars: int

    def check(self, params: GenerationParams) -> str | None:
        """None if `params` is within bounds, else why not."""
        if params.max_tokens > self.max_tokens:
            return f"max_tokens {params.max_tokens} above this node's limit of {self.max_tokens}"
        if params.prompt is not None:
            chars = len(params.prompt)
        else:
            chars = sum(len(m.content) for m in params.messages or ())
        if chars > self.max_prompt_chars:
            return f"prompt of {chars} characters above this node's limit of {self.max_prompt_chars}"
        return None
