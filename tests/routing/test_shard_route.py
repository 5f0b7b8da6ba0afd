"""Chain planning: cheapest cover of the layers, typed errors for gaps, deterministic ties."""

from __future__ import annotations

import random

import pytest

from dinet.errors import RoutingError
from dinet.overlay.vivaldi import Coordinates, estimate_rtt_ms
from dinet.routing.shard import UNKNOWN_RTT_MS, StageOffer, chain_token_budget, hop_ms, plan_shard_route


def offer(peer: str, start: int, stop: int, latency: float = 10.0, rtt: float = 1.0) -> StageOffer:
    return StageOffer(peer, start, stop, latency_ms=latency, rtt_ms=rtt)


def test_the_cheapest_chain_wins_over_fewer_but_slower_stages():
    spans = [
        offer("slow-whole", 0, 30, latency=100),
        offer("a", 0, 10),
        offer("b", 10, 20),
        offer("c", 20, 30),
        offer("c2", 20, 30, latency=50),
    ]
    route = plan_shard_route(spans, 30)
    assert route.peers == ("a", "b", "c")
    assert route.cost_ms == pytest.approx(33.0)


def test_round_trips_count_per_stage():
    # Two cheap stages with far-away peers lose to one nearby stage of the same compute.
    spans = [offer("a", 0, 15, rtt=40), offer("b", 15, 30, rtt=40), offer("near", 0, 30, latency=25)]
    assert plan_shard_route(spans, 30).peers == ("near",)


def test_a_gap_is_a_routing_error():
    spans = [offer("a", 0, 10), offer("b", 12, 30)]
    with pytest.raises(RoutingError, match="block 10"):
        plan_shard_route(spans, 30)


def test_excluded_peers_are_not_used():
    spans = [offer("a", 0, 10), offer("b", 10, 20), offer("b-spare", 10, 20, latency=30), offer("c", 20, 30)]
    assert plan_shard_route(spans, 30).peers == ("a", "b", "c")
    route = plan_shard_route(spans, 30, exclude=frozenset({"b"}))
    assert route.peers == ("a", "b-spare", "c")
    with pytest.raises(RoutingError):
        plan_shard_route(spans, 30, exclude=frozenset({"b", "b-spare"}))


def test_a_model_without_layers_is_a_routing_error():
    with pytest.raises(RoutingError):
        plan_shard_route([offer("a", 0, 30)], 0)


def test_ties_are_broken_by_stage_count_then_peer_ids_whatever_the_input_order():
    spans = [
        offer("z", 0, 30, latency=31),
        offer("b", 0, 15),
        offer("a", 0, 15),
        offer("d", 15, 30),
        offer("c", 15, 30),
    ]
    # a and b cost the same, as do c and d: the lower peer ids win, in any input order.
    routes = set()
    for seed in range(20):
        shuffled = spans[:]
        random.Random(seed).shuffle(shuffled)
        routes.add(plan_shard_route(shuffled, 30).peers)
    assert routes == {("a", "c")}
    tie = [
        offer("two-a", 0, 15, latency=5),
        offer("two-b", 15, 30, latency=5),
        offer("one", 0, 30, latency=11),
    ]
    assert plan_shard_route(tie, 30).peers == ("one",)  # 12 ms either way: fewer stages


def test_a_thousand_spans_plan_quickly_and_correctly():
    rng = random.Random(7)
    spans = []
    for i in range(1000):
        start = rng.randrange(0, 60)
        spans.append(
            offer(
                f"p{i:04d}",
                start,
                min(64, start + rng.randrange(1, 12)),
                latency=rng.uniform(1, 30),
                rtt=rng.uniform(0.5, 20),
            )
        )
    spans += [offer(f"cover{i}", i * 8, i * 8 + 8, latency=1000) for i in range(8)]
    route = plan_shard_route(spans, 64)
    assert route.stages[0].start == 0 and route.stages[-1].stop == 64
    assert all(a.stop == b.start for a, b in zip(route.stages, route.stages[1:], strict=False))
    assert route.cost_ms == pytest.approx(sum(s.cost_ms for s in route.stages))
    assert route.cost_ms < 8 * 1000  # the expensive fallback cover is not the answer


def priced(peer: str, start: int, stop: int, price: float, latency: float = 10.0) -> StageOffer:
    return StageOffer(
        peer,
        start,
        stop,
        latency_ms=latency,
        rtt_ms=1.0,
        price_per_token=price,
        price_per_prompt_token=price / 2,
    )


def test_by_price_the_cheapest_chain_wins_and_time_breaks_ties():
    spans = [
        priced("a", 0, 10, 0.1),
        priced("fast", 10, 30, 0.5, latency=1),
        priced("b", 10, 20, 0.1),
        priced("c", 20, 30, 0.1, latency=30),
        priced("c-fast", 20, 30, 0.1, latency=5),
    ]
    assert plan_shard_route(spans, 30).peers == ("a", "fast")  # by time
    cheapest = plan_shard_route(spans, 30, by="price")
    assert cheapest.peers == ("a", "b", "c-fast")
    # A chain's price is what every stage asks together: each works on every token.
    assert cheapest.price_per_token == pytest.approx(0.3)
    assert cheapest.price_per_prompt_token == pytest.approx(0.15)
    assert cheapest.within(0.3) and cheapest.within(None) and not cheapest.within(0.29)


def test_a_chain_token_budget_follows_its_time_per_token():
    route = plan_shard_route([offer("a", 0, 15, latency=9), offer("b", 15, 30, latency=9)], 30)
    assert route.cost_ms == pytest.approx(20.0)
    assert chain_token_budget(route, 1.0) == 49  # 50 steps of 20 ms, one of them the prompt's
    assert chain_token_budget(route, 0.001) == 1  # never below one token


def placed_at(x_ms: float) -> Coordinates:
    return Coordinates((x_ms, 0.0, 0.0, 0.0), 0.5, 0.2)


def two_clusters(with_coords: bool) -> list[StageOffer]:
    """Three spans served in Europe (x = 0) and in America (x = 80 ms away). The client is
    equally far from all (60 ms): its own round trips tell the clusters apart not at all."""

    def at(peer: str, start: int, stop: int, latency: float, x_ms: float) -> StageOffer:
        coords = placed_at(x_ms) if with_coords else None
        return StageOffer(peer, start, stop, latency_ms=latency, rtt_ms=60.0, coords=coords)

    return [
        at("eu-a", 0, 10, 10, 0),
        at("eu-b", 10, 20, 2, 1),
        at("eu-c", 20, 30, 10, 2),
        at("us-a", 0, 10, 9, 80),
        at("us-b", 10, 20, 10, 81),
        at("us-c", 20, 30, 9, 82),
    ]


def test_a_chain_stays_inside_one_cluster_when_its_stages_coordinates_say_so():
    # By the client's round trips alone, the fastest stage of each span wins: across the ocean twice.
    assert plan_shard_route(two_clusters(with_coords=False), 30).peers == ("us-a", "eu-b", "us-c")
    # With the stages' coordinates, every hop of the ring counts: the chain stays in Europe.
    route = plan_shard_route(two_clusters(with_coords=True), 30)
    assert route.peers == ("eu-a", "eu-b", "eu-c")
    hops = [estimate_rtt_ms(placed_at(a), placed_at(b)) for a, b in ((0, 1), (1, 2), (2, 0))]
    assert route.cost_ms == pytest.approx(10 + 2 + 10 + sum(hops))


def test_a_hop_without_coordinates_costs_the_clients_round_trip_to_the_next_stage():
    placed, unplaced = StageOffer("a", 0, 10, coords=placed_at(0)), StageOffer("b", 10, 30, rtt_ms=7.0)
    assert hop_ms(placed, unplaced) == 7.0
    assert hop_ms(unplaced, placed) == UNKNOWN_RTT_MS  # nobody measured a
    assert hop_ms(placed, StageOffer("c", 10, 30, coords=placed_at(30))) == pytest.approx(31.0)
