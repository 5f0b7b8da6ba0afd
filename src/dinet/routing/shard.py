"""Planning a pipeline chain: pure and deterministic, no I/O.

Stages hold contiguous block ranges `[start, stop)` and run their whole range, so a
chain is a path over layer boundaries: 0 -> s1 -> s2 -> ... -> n_layers, one stage per
edge. Each stage costs its per-token latency plus the client's round trip to it, which
stands in for the hop into it (the stages relay to each other; only the client has
measured them all). Edges only go forward, so the boundaries form a DAG and one pass
over them in ascending order finds the cheapest chain (as Petals' shortest path,
without needing a heap).

Ties are broken by fewer stages, then by the peer ids in chain order, so the same
spans always give the same route. Planned `by="price"`, the chain's summed price per
completion token comes first and time breaks ties (the "cost" policy, and the fallback
when the fastest chain is above a client's price limit).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

from dinet.errors import RoutingError
from dinet.wire.ids import PeerId

UNKNOWN_STAGE_MS = 20.0  # per-token time assumed for a stage nobody has measured
UNKNOWN_RTT_MS = 50.0
PRICE_ROUNDING = 1e-9  # a sum of prices may exceed a limit it equals by float rounding


@dataclass(frozen=True)
class StageOffer:
    """One peer's span, with what is known of its speed."""

    peer_id: PeerId
    start: int
    stop: int
    latency_ms: float | None = None  # per decode step, measured or advertised
    rtt_ms: float | None = None
    price_per_token: float = 0.0  # advertised, credits per completion token
    price_per_prompt_token: float = 0.0

    @property
    def cost_ms(self) -> float:
        latency = UNKNOWN_STAGE_MS if self.latency_ms is None else self.latency_ms
        rtt = UNKNOWN_RTT_MS if self.rtt_ms is None else self.rtt_ms
        return latency + rtt


@dataclass(frozen=True)
class Route:
    stages: tuple[StageOffer, ...]
    cost_ms: float

    @property
    def peers(self) -> tuple[PeerId, ...]:
        return tuple(s.peer_id for s in self.stages)

    @property
    def price_per_token(self) -> float:
        """What the whole chain asks per completion token: every stage works on every token."""
        return sum(s.price_per_token for s in self.stages)

    @property
    def price_per_prompt_token(self) -> float:
        return sum(s.price_per_prompt_token for s in self.stages)

    def within(self, max_price: float | None) -> bool:
        """The chain's prompt and completion prices are both at most `max_price` (None: any)."""
        if max_price is None:
            return True
        limit = max_price * (1 + PRICE_ROUNDING) + PRICE_ROUNDING  # 0.1 * 3 is 0.30000000000000004
        return self.price_per_token <= limit and self.price_per_prompt_token <= limit


def chain_token_budget(route: Route, deadline_s: float) -> int:
    """How many tokens `route` can produce within `deadline_s`, by its estimated time per
    token (the first token also waits about one trip around the ring)."""
    per_token_s = max(route.cost_ms, 1.0) / 1000
    return max(1, int(deadline_s / per_token_s) - 1)


By = Literal["time", "price"]
# (price, cost, stage count, peer ids), compared in order; price is 0 when planning by time
_Best = tuple[float, float, int, tuple[PeerId, ...]]


def plan_shard_route(
    spans: list[StageOffer], n_layers: int, *, exclude: frozenset[PeerId] = frozenset(), by: By = "time"
) -> Route:
    """The cheapest chain covering all `n_layers` blocks: by time per token, or `by="price"`.

    Peers in `exclude` are not used. RoutingError names the first boundary no chain
    can get past when the spans leave a gap.
    """
    if n_layers < 1:
        raise RoutingError(f"cannot plan a model of {n_layers} layers")
    by_start: dict[int, list[StageOffer]] = defaultdict(list)
    for span in spans:
        if span.peer_id in exclude or not 0 <= span.start < span.stop <= n_layers:
            continue
        by_start[span.start].append(span)
    best: dict[int, tuple[_Best, tuple[StageOffer, ...]]] = {0: ((0.0, 0.0, 0, ()), ())}
    # Ascending boundaries: every edge into a boundary comes from a smaller one,
    # so each boundary is final by the time it is expanded.
    for boundary in sorted(set(by_start) | {0}):
        if boundary not in best:
            continue
        (price, cost, count, peers), chain = best[boundary]
        for span in by_start[boundary]:
            more = span.price_per_token if by == "price" else 0.0
            key: _Best = (price + more, cost + span.cost_ms, count + 1, (*peers, span.peer_id))
            current = best.get(span.stop)
            if current is None or key < current[0]:
                best[span.stop] = (key, (*chain, span))
    if n_layers not in best:
        reached = max(best)
        raise RoutingError(
            f"no chain of stages covers layers [0, {n_layers}): nothing continues from block {reached}"
        )
    (_, cost, _, _), chain = best[n_layers]
    return Route(stages=chain, cost_ms=cost)
