"""Choosing a peer: pure and deterministic, no I/O.

A first score: the expected time to finish the request on each peer, from its
round-trip time, time to first token, decode speed and current backlog.
Measured figures are given by the caller in place of advertised ones.
"""

from __future__ import annotations

from dataclasses import dataclass

UNKNOWN_TOKENS_PER_S = 20.0  # assumed for a peer that has not served anything yet


@dataclass(frozen=True)
class PeerView:
    peer_id: str
    rtt_ms: float
    tokens_per_s: float
    ttft_ms: float
    active: int
    queued: int
    max_concurrent: int
    price_per_token: float = 0.0


def expected_ms(peer: PeerView, max_tokens: int) -> float:
    speed = peer.tokens_per_s if peer.tokens_per_s > 0 else UNKNOWN_TOKENS_PER_S
    decode_ms = max_tokens * 1000.0 / speed
    # Work ahead of us shares the peer's slots: each full round of it costs one more answer.
    waiting_rounds = (peer.active + peer.queued) / max(peer.max_concurrent, 1)
    return peer.rtt_ms + peer.ttft_ms + decode_ms * (1.0 + waiting_rounds)


def rank_peers(peers: list[PeerView], max_tokens: int) -> list[PeerView]:
    """Best first; ties broken by peer id so the order is reproducible."""
    return sorted(peers, key=lambda p: (expected_ms(p, max_tokens), p.peer_id))
