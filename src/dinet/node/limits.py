"""Per-peer limits on /dinet/infer/1, and bounds on what one request may ask.

Pure: no I/O, and the caller passes the clock (`trio.current_time()` in the node),
so a test drives the limiter with made-up times.

Each peer has a token bucket (`rate` requests per second, up to `burst` at once)
and a cap on its streams in progress. A peer over either limit is refused; the
others keep their share of the node. The table of peers is bounded: idle peers
whose bucket has refilled are forgotten first, and when every entry is in use a new
peer is refused rather than the table growing.

A peer that keeps asking after it was refused is flooding. Each refusal is a strike;
strikes drain at the peer's own rate, so a peer that asks no faster than its rate
soon has none. Up to `burst` strikes a refusal is answered at once (an honest client
hitting the limit learns it quickly and asks another peer). Beyond that the peer is
cooling down: each of its refusals is held until its strikes have drained back to
`burst` (up to `MAX_HOLD_S`; strikes stop counting there, so a cool-down ends at most
`MAX_HOLD_S` after the flood). A flooder that waits for its answers is so slowed to a
few streams per second however many it keeps open, and gets no more than its limits
allow. Those limits still hold for it: a cool-down never refuses a stream the bucket
and the concurrency cap allow, so a busy honest client (a gateway with many users
behind one peer id) is slowed, never starved. At most `MAX_HELD` streams of one peer
are held; beyond those its streams are dropped (reset without a reply), which costs
the node least.
"""

from __future__ import annotations

from dataclasses import dataclass

from dinet.wire.ids import PeerId
from dinet.wire.messages import GenerationParams

MAX_TRACKED_PEERS = 4096
# The longest a refusal is held, and so the longest a cool-down outlasts the flood.
# Well under a client's wait for a first frame (client/ask.py), so that a held
# refusal is never taken for a stalled peer.
MAX_HOLD_S = 2.0
MAX_HELD = 16  # refusals held at once per peer; more streams are dropped


@dataclass(frozen=True)
class Refusal:
    """Why a stream is refused, and how to answer it.

    `hold_s` > 0: send the refusal only after that many seconds (the peer may ask again
    then), and call `PeerLimiter.unhold` once it is sent. `drop`: reset the stream
    without a reply.
    """

    reason: str
    hold_s: float = 0.0
    drop: bool = False


@dataclass
class _Bucket:
    tokens: float
    updated: float
    active: int = 0
    strikes: float = 0.0  # refusals, draining at the peer's rate
    held: int = 0  # refusals being held


class PeerLimiter:
    def __init__(self, rate: float, burst: int, concurrency: int, max_peers: int = MAX_TRACKED_PEERS) -> None:
        if rate <= 0 or burst < 1 or concurrency < 1 or max_peers < 1:
            raise ValueError("rate, burst, concurrency and max_peers must be positive")
        self._rate = rate
        self._burst = float(burst)
        self._concurrency = concurrency
        self._max_peers = max_peers
        self._peers: dict[PeerId, _Bucket] = {}

    @property
    def tracked(self) -> int:
        return len(self._peers)

    def acquire(self, peer: PeerId, now: float) -> Refusal | None:
        """Take one request's worth for `peer`: None if allowed (call `release` when
        done), else how it is refused."""
        bucket = self._peers.get(peer)
        if bucket is None:
            if len(self._peers) >= self._max_peers:
                self._forget_idle(now)
            if len(self._peers) >= self._max_peers:
                return Refusal(f"tracking {self._max_peers} peers already")
            bucket = self._peers[peer] = _Bucket(self._burst, now)
        elapsed = max(0.0, now - bucket.updated)
        bucket.tokens = min(self._burst, bucket.tokens + elapsed * self._rate)
        bucket.strikes = max(0.0, bucket.strikes - elapsed * self._rate)
        bucket.updated = max(bucket.updated, now)
        if bucket.active >= self._concurrency:
            reason = f"{bucket.active} requests of this peer in progress (limit {self._concurrency})"
        elif bucket.tokens < 1.0:
            reason = f"more than {self._rate:g} requests/s (burst {self._burst:g}) from this peer"
        else:
            bucket.tokens -= 1.0
            bucket.active += 1
            return None
        return self._refuse(bucket, reason)

    def _refuse(self, bucket: _Bucket, reason: str) -> Refusal:
        bucket.strikes = min(bucket.strikes + 1.0, self._burst + MAX_HOLD_S * self._rate)
        if bucket.strikes <= self._burst:
            return Refusal(reason)
        if bucket.held >= MAX_HELD:
            return Refusal(reason, drop=True)
        bucket.held += 1
        # Until its strikes are back under the burst and its bucket has a token again.
        until_calm = (bucket.strikes - self._burst) / self._rate
        until_token = max(0.0, 1.0 - bucket.tokens) / self._rate
        hold = min(MAX_HOLD_S, max(until_calm, until_token))
        return Refusal(f"{reason}; cooling down: ask again in {hold:.1f} s at the earliest", hold_s=hold)

    def unhold(self, peer: PeerId) -> None:
        """A held refusal was sent (or its stream ended)."""
        bucket = self._peers.get(peer)
        if bucket is not None and bucket.held > 0:
            bucket.held -= 1

    def release(self, peer: PeerId) -> None:
        bucket = self._peers.get(peer)
        if bucket is not None and bucket.active > 0:
            bucket.active -= 1

    def _forget_idle(self, now: float) -> None:
        for peer, bucket in list(self._peers.items()):
            refilled = bucket.tokens + max(0.0, now - bucket.updated) * self._rate >= self._burst
            calm = bucket.strikes - max(0.0, now - bucket.updated) * self._rate <= 0.0
            if bucket.active == 0 and bucket.held == 0 and refilled and calm:
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
        chars = params.prompt_chars
        if chars > self.max_prompt_chars:
            return f"prompt of {chars} characters above this node's limit of {self.max_prompt_chars}"
        return None
