"""Planning a pipeline chain: pure and deterministic, no I/O.

Stages hold contiguous block ranges `[start, stop)` and run their whole range, so a
chain is a path over layer boundaries: 0 -> s1 -> s2 -> ... -> n_layers, one stage per
edge. The stages relay to each other in a ring (the last stage's token goes back to
the first), so a token costs every stage's per-token latency plus every hop of the
ring: from each stage to the next, and from the last back to the first. A hop costs
the round trip the two stages' network coordinates predict (dinet.overlay.vivaldi);
where either has none, the client's own round trip to the stage entered stands in.
So a chain whose stages sit near each other beats one that crosses the world and
back at every token, even when the client is far from all of them.

Each stage's cost depends on the stage before it, so the plan is a shortest path over
stages (a stage follows one whose span ends where its own starts), taken once per
stage that can start the chain (the hop that closes the ring depends on it). Edges only
go forward: one pass over the stages by ascending start finds the cheapest chain.

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
from dinet.overlay.vivaldi import Coordinates, estimate_rtt_ms
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
    coords: Coordinates | None = None  # its network coordinates, if its manifest gives trusted ones

    @property
    def step_ms(self) -> float:
        return UNKNOWN_STAGE_MS if self.latency_ms is None else self.latency_ms

    @property
    def cost_ms(self) -> float:
        """Its step and the client's round trip to it (what it costs alone, or with no coordinates)."""
        return self.step_ms + (UNKNOWN_RTT_MS if self.rtt_ms is None else self.rtt_ms)


def hop_ms(before: StageOffer, after: StageOffer) -> float:
    """What passing a step from `before` to `after` costs: the round trip their coordinates
    predict, or, lacking them, the client's round trip to `after`."""
    if before.coords is not None and after.coords is not None:
        return estimate_rtt_ms(before.coords, after.coords)
    return UNKNOWN_RTT_MS if after.rtt_ms is None else after.rtt_ms


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
    usable = sorted(
        (s for s in spans if s.peer_id not in exclude and 0 <= s.start < s.stop <= n_layers),
        key=lambda s: (s.start, s.stop, s.peer_id),
    )
    ends: dict[int, list[StageOffer]] = defaultdict(list)  # boundary -> the stages ending there
    for stage in usable:
        ends[stage.stop].append(stage)
    best: tuple[_Best, tuple[StageOffer, ...]] | None = None
    reached = 0
    for first in (s for s in usable if s.start == 0):
        found, furthest = _cheapest_from(first, usable, ends, n_layers, by)
        reached = max(reached, furthest)
        if found is not None and (best is None or found[0] < best[0]):
            best = found
    if best is None:
        raise RoutingError(
            f"no chain of stages covers layers [0, {n_layers}): nothing continues from block {reached}"
        )
    (_, cost, _, _), chain = best
    return Route(stages=chain, cost_ms=cost)


def _cheapest_from(
    first: StageOffer,
    usable: list[StageOffer],
    ends: dict[int, list[StageOffer]],
    n_layers: int,
    by: By,
) -> tuple[tuple[_Best, tuple[StageOffer, ...]] | None, int]:
    """The cheapest chain that starts with `first`, its ring closed; and the furthest block reached."""
    best: dict[int, tuple[_Best, tuple[StageOffer, ...]]] = {}  # id(stage) -> the cheapest chain ending in it

    def price(stage: StageOffer) -> float:
        return stage.price_per_token if by == "price" else 0.0

    best[id(first)] = ((price(first), first.step_ms, 1, (first.peer_id,)), (first,))
    for stage in usable:  # by ascending start: every stage before it is final
        if stage.start == 0:
            continue
        for before in ends[stage.start]:
            if id(before) not in best:
                continue
            (p, cost, count, peers), chain = best[id(before)]
            key: _Best = (
                p + price(stage),
                cost + hop_ms(before, stage) + stage.step_ms,
                count + 1,
                (*peers, stage.peer_id),
            )
            if id(stage) not in best or key < best[id(stage)][0]:
                best[id(stage)] = (key, (*chain, stage))
    reached = max(chain[-1].stop for _, chain in best.values())
    closed = []
    for (p, cost, count, peers), chain in best.values():
        if chain[-1].stop == n_layers:
            closed.append(((p, cost + hop_ms(chain[-1], first), count, peers), chain))
    return (min(closed, key=lambda found: found[0]) if closed else None), reached
