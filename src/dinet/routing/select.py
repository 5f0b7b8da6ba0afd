"""Choosing a peer: pure and deterministic, no I/O.

Each candidate gets a cost under a policy; lower is better.

- `latency`: the expected time to finish the request, from round-trip time, time to
  first token, decode speed and the work already queued on the peer.
- `throughput`: the same, but decode speed counts double, so long answers go to the
  fastest peers even when they are a little farther away.
- `cost`: price first (the request's expected credits), expected time to break ties.

Measured figures (this client's own observations) beat advertised ones, and stale
measurements decay towards the advertised value. A round trip never measured is
estimated from network coordinates when both sides have them (`estimated_rtt_ms`, see
dinet.overlay.vivaldi), else taken as `UNKNOWN_RTT_MS`. A known bad reputation adds a
penalty; a peer outside the caller's region pays a small one. The prompt's prefill
counts too, estimated from the peer's decode speed (CPU prefill runs about three times
faster than decoding); a peer holding the beginning of the prompt in its prefix cache
(`dinet.routing.affinity`) prefills only the rest, so the next turn of a chat with a long
system prompt or document stays where that beginning is, unless that peer is much worse.
A peer whose reputation is low on enough evidence is not a candidate at all (`trusted`). Under a deadline, the
peers expected to finish in time come first, in order of cost, then the others.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Literal

from dinet.wire.ids import PeerId

Policy = Literal["latency", "throughput", "cost"]

UNKNOWN_TOKENS_PER_S = 20.0  # assumed for a peer that neither advertises nor was measured
UNKNOWN_RTT_MS = 50.0
MEASUREMENT_HALF_LIFE_S = 60.0  # a measurement this old counts half against the advert
OTHER_REGION_PENALTY_MS = 20.0
CHARS_PER_TOKEN = 4.0  # a prompt's characters per token, roughly (English text)
PREFILL_SPEEDUP = 3.0  # prompt tokens a second per decoded token a second (llama.cpp on CPU: 3x)
EXCLUDE_BELOW = 0.35  # reputation under which a peer is not asked at all ...
MIN_EVIDENCE = 3.5  # ... once this many (decayed) events stand behind it (two caught answers)


@dataclass(frozen=True)
class PeerView:
    """What is known of one candidate at decision time."""

    peer_id: PeerId
    rtt_ms: float | None  # measured by this client, None if never
    tokens_per_s: float  # advertised
    ttft_ms: float  # advertised
    active: int  # advertised load, plus this client's own requests in flight there
    queued: int
    max_concurrent: int
    price_per_token: float = 0.0  # per completion token
    price_per_prompt_token: float = 0.0
    observed_tokens_per_s: float | None = None  # measured by this client
    observed_age_s: float = 0.0  # how old that measurement is
    reputation: float | None = None  # 0 (bad) .. 1 (good), None if unknown
    evidence: float = 0.0  # how many (decayed) events the reputation rests on
    region: str = ""
    estimated_rtt_ms: float | None = None  # from network coordinates, for a peer never measured
    prompt_chars: int = 0  # of this request's prompt
    cached_prompt_chars: int = 0  # of them, in the peer's prefix cache as far as we know

    @property
    def known_rtt_ms(self) -> float:
        """The round trip to reckon with: measured, else estimated, else a guess."""
        if self.rtt_ms is not None:
            return self.rtt_ms
        return UNKNOWN_RTT_MS if self.estimated_rtt_ms is None else self.estimated_rtt_ms


def decode_speed(peer: PeerView) -> float:
    """Advertised speed, pulled towards this client's own measurement while it is fresh."""
    advertised = peer.tokens_per_s if peer.tokens_per_s > 0 else UNKNOWN_TOKENS_PER_S
    observed = peer.observed_tokens_per_s
    if observed is None:
        return advertised
    weight = math.pow(0.5, peer.observed_age_s / MEASUREMENT_HALF_LIFE_S)
    return weight * observed + (1.0 - weight) * advertised


def token_budget(peer: PeerView, deadline_s: float) -> int:
    """How many tokens `peer` can produce within `deadline_s`, by its known speed."""
    decode_s = deadline_s - (peer.known_rtt_ms + peer.ttft_ms) / 1000
    return max(1, int(decode_s * decode_speed(peer)))


def cost(peer: PeerView, max_tokens: int, policy: Policy = "latency", region: str = "") -> float:
    """The candidate's cost under `policy`, in milliseconds of expected time: lower is better."""
    time_ms = expected_ms(peer, max_tokens, decode_weight=2.0 if policy == "throughput" else 1.0)
    if peer.reputation is not None:
        time_ms *= 1.0 + 4.0 * (1.0 - min(max(peer.reputation, 0.0), 1.0))
    if region and peer.region and peer.region != region:
        time_ms += OTHER_REGION_PENALTY_MS
    if policy == "cost":
        # Price dominates; time only orders peers of equal price.
        return peer.price_per_token * max_tokens * 1e9 + time_ms
    return time_ms


def expected_ms(peer: PeerView, max_tokens: int, *, decode_weight: float = 1.0) -> float:
    """How long `peer` is expected to take for an answer of `max_tokens`, from our side."""
    decode_ms = max_tokens * 1000.0 / decode_speed(peer) * decode_weight
    # Work ahead of us shares the peer's slots: each full round of it costs one more answer.
    waiting_rounds = (peer.active + peer.queued) / (peer.max_concurrent or 1)
    return peer.known_rtt_ms + peer.ttft_ms + prefill_ms(peer) + decode_ms * (1.0 + waiting_rounds)


def prefill_ms(peer: PeerView) -> float:
    """The expected prefill of the part of the prompt the peer does not hold already."""
    uncached = max(0, peer.prompt_chars - peer.cached_prompt_chars) / CHARS_PER_TOKEN
    return uncached * 1000.0 / (PREFILL_SPEEDUP * decode_speed(peer))


def meets_deadline(peer: PeerView, max_tokens: int, deadline_s: float) -> bool:
    return expected_ms(peer, max_tokens) <= deadline_s * 1000.0


def rank_peers(
    peers: list[PeerView],
    max_tokens: int,
    policy: Policy = "latency",
    *,
    region: str = "",
    deadline_s: float | None = None,
    limit: int | None = None,
) -> list[PeerView]:
    """Best first; ties broken by peer id so the order is reproducible.

    With `deadline_s`, the peers expected to miss it come after all the others. With
    `limit`, only the best `limit` are ordered (a heap: O(n log limit)).
    """
    keyed = [
        (
            deadline_s is not None and not meets_deadline(p, max_tokens, deadline_s),
            cost(p, max_tokens, policy, region),
            p.peer_id,
            p,
        )
        for p in peers
    ]
    if limit is None:
        keyed.sort(key=_order)
        return [p for *_, p in keyed]
    return [p for *_, p in heapq.nsmallest(limit, keyed, key=_order)]


def _order(entry: tuple[bool, float, str, PeerView]) -> tuple[bool, float, str]:
    return entry[0], entry[1], entry[2]


def within_budget(peers: list[PeerView], max_price: float | None) -> list[PeerView]:
    """The peers whose prompt and completion prices are both at most `max_price` (None: all)."""
    if max_price is None:
        return list(peers)
    return [p for p in peers if p.price_per_token <= max_price and p.price_per_prompt_token <= max_price]


def trusted(
    peers: list[PeerView], exclude_below: float = EXCLUDE_BELOW, min_evidence: float = MIN_EVIDENCE
) -> list[PeerView]:
    """The peers not excluded for a low reputation.

    A peer is excluded only when its reputation is below `exclude_below` on at least
    `min_evidence` events, so that one failure or one unlucky answer never excludes.
    """
    return [p for p in peers if not excluded(p, exclude_below, min_evidence)]


def excluded(
    peer: PeerView, exclude_below: float = EXCLUDE_BELOW, min_evidence: float = MIN_EVIDENCE
) -> bool:
    return peer.reputation is not None and peer.evidence >= min_evidence and peer.reputation < exclude_below
