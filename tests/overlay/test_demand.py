"""Supply follows demand: the demand book and `choose_model`, driven by made-up demand
(the core is pure: no node, no network)."""

from __future__ import annotations

import random

from dinet.overlay.demand import (
    Choice,
    DemandBook,
    DemandRecord,
    Policy,
    choose_model,
    publish_probability,
    record_weight,
)
from dinet.wire.ids import ModelHash, PeerId

A, B, C = ModelHash("model-a"), ModelHash("model-b"), ModelHash("model-c")
ME = PeerId("me")
POLICY = Policy(margin=0.5, min_dwell_s=600, idle_after_s=600)


def publish(book: DemandBook, now: float, model: ModelHash, per_min: float, publisher: str = "p") -> None:
    book.add(DemandRecord(PeerId(publisher), model, requests_per_min=per_min, busy_per_min=0, at=now))


def supply(book: DemandBook, now: float, model: ModelHash, count: int, prefix: str) -> None:
    for i in range(count):
        book.serving(PeerId(f"{prefix}-{i}"), {model}, now)


def choose(book, now, current, since=0.0, candidates=(A, B, C), rng=None) -> Choice:
    return choose_model(
        book, now, me=ME, current=current, serving_since=since, candidates=candidates, rng=rng, policy=POLICY
    )


def test_the_newest_record_of_a_publisher_wins_and_old_ones_expire():
    book = DemandBook(record_ttl_s=180)
    publish(book, 10, A, 5)
    publish(book, 20, A, 8)
    assert not book.add(DemandRecord(PeerId("p"), A, 100, 0, at=15))  # older: ignored
    publish(book, 20, A, 3, publisher="q")
    assert book.demand(A, now=30) == 11
    assert book.demand(A, now=250) == 0  # both expired
    assert book.last_demand(A) == 20


def test_busy_refusals_count_as_demand():
    book = DemandBook()
    book.add(DemandRecord(PeerId("p"), A, requests_per_min=4, busy_per_min=6, at=0))
    assert book.demand(A, now=1) == 10


def test_a_manifest_replaces_what_its_peer_served_before():
    book = DemandBook(record_ttl_s=180)
    book.serving(PeerId("x"), {A}, 0)
    book.serving(PeerId("x"), {B}, 10)
    assert book.servers(A, 20) == set() and book.servers(B, 20) == {"x"}
    assert book.servers(B, 200) == set()  # the manifest expired
    book.expire(200)
    assert book.models(200) == set()


def test_an_idle_node_serves_the_model_whose_demand_most_exceeds_its_supply():
    book = DemandBook()
    publish(book, 0, A, 100)
    supply(book, 0, A, 10, "a")  # 100/min over 11 servers with me: ~9 each
    publish(book, 0, B, 30, publisher="q")  # 30/min and nobody serves it
    assert choose(book, 1, None).model == B


def test_an_idle_node_stays_idle_without_demand():
    book = DemandBook()
    supply(book, 0, A, 3, "a")
    assert choose(book, 1, None).model is None


def test_the_budget_rules_out_a_model_in_demand():
    book = DemandBook()
    publish(book, 0, C, 1000)
    publish(book, 0, A, 5, publisher="q")
    assert choose(book, 1, None, candidates=(A, B)).model == A
    assert choose(book, 1, C, candidates=(A, B)).model == A  # C stopped fitting: move


def test_switches_when_demand_shifts_but_only_after_the_dwell_time():
    book = DemandBook()
    publish(book, 0, A, 50)
    supply(book, 0, A, 4, "a")
    book.serving(ME, {A}, 0)
    publish(book, 100, B, 200, publisher="q")  # demand shifts to B, which nobody serves
    assert choose(book, 100, A, since=0).model == A  # served A for 100 s only
    publish(book, 700, A, 50)
    publish(book, 700, B, 200, publisher="q")
    supply(book, 700, A, 4, "a")
    later = choose(book, 700, A, since=0)
    assert later.model == B, later.reason


def test_the_last_server_of_a_model_in_demand_stays():
    book = DemandBook()
    publish(book, 900, A, 5)
    book.serving(ME, {A}, 900)
    publish(book, 900, B, 500, publisher="q")
    assert choose(book, 1000, A, since=0).model == A


def test_a_node_stops_when_demand_for_its_model_goes_away():
    book = DemandBook(record_ttl_s=180)
    publish(book, 0, A, 20)
    book.serving(ME, {A}, 0)
    publish(book, 60, A, 0)  # the last minute saw nothing
    assert choose(book, 300, A, since=0).model == A  # not yet idle for idle_after_s
    stopped = choose(book, 700, A, since=0)
    assert stopped.model is None, stopped.reason


def test_a_node_whose_demand_went_away_moves_to_a_model_in_demand():
    book = DemandBook(record_ttl_s=180)
    publish(book, 0, A, 20)
    publish(book, 60, A, 0)
    publish(book, 650, B, 10, publisher="q")
    assert choose(book, 700, A, since=0).model == B


def test_no_flapping_under_noisy_demand():
    """Ten auto nodes, two models with the same mean demand and +-25% noise every minute:
    after they settle, nodes seldom move (each move must beat the margin)."""
    rng = random.Random(4)
    nodes = [PeerId(f"n{i}") for i in range(10)]
    current: dict[PeerId, ModelHash | None] = dict.fromkeys(nodes)
    since = dict.fromkeys(nodes, 0.0)
    book = DemandBook()
    moves = 0
    for minute in range(240):
        now = minute * 60.0
        for model, publisher in ((A, "pa"), (B, "pb")):
            publish(book, now, model, 100 * rng.uniform(0.75, 1.25), publisher=publisher)
        for node in nodes:
            if current[node] is not None:
                book.serving(node, {current[node]}, now)
        for node in rng.sample(nodes, len(nodes)):
            choice = choose_model(
                book, now, me=node, current=current[node], serving_since=since[node],
                candidates=(A, B), rng=rng, policy=POLICY,
            )  # fmt: skip
            if choice.model != current[node]:
                if minute >= 60:
                    moves += 1
                current[node], since[node] = choice.model, now
                book.serving(node, {choice.model} if choice.model else set(), now)
    served = [current[n] for n in nodes]
    assert served.count(A) >= 3 and served.count(B) >= 3  # both models keep servers
    assert moves <= 6  # over three hours, ten nodes


def test_supply_follows_a_demand_shift_across_many_nodes():
    """Twenty nodes on A; demand moves to B: some move, A keeps servers for its remaining demand."""
    rng = random.Random(9)
    nodes = [PeerId(f"n{i}") for i in range(20)]
    current: dict[PeerId, ModelHash | None] = dict.fromkeys(nodes, A)
    since = dict.fromkeys(nodes, 0.0)
    book = DemandBook()
    for minute in range(10, 60):
        now = minute * 60.0
        publish(book, now, A, 100 if minute < 20 else 25, publisher="pa")
        publish(book, now, B, 0 if minute < 20 else 75, publisher="pb")
        for node in nodes:
            book.serving(node, {current[node]} if current[node] else set(), now)
        for node in rng.sample(nodes, len(nodes)):
            choice = choose_model(
                book, now, me=node, current=current[node], serving_since=since[node],
                candidates=(A, B), rng=rng, policy=POLICY,
            )  # fmt: skip
            if choice.model != current[node]:
                current[node], since[node] = choice.model, now
                book.serving(node, {choice.model} if choice.model else set(), now)
    on_b = sum(1 for n in nodes if current[n] == B)
    on_a = sum(1 for n in nodes if current[n] == A)
    assert 8 <= on_b <= 17 and on_a >= 3


def test_idle_nodes_deciding_at_once_spread_over_the_models_in_need():
    rng = random.Random(2)
    book = DemandBook()
    publish(book, 0, A, 60)
    publish(book, 0, B, 40, publisher="q")
    picks = [choose(book, 1, None, rng=rng).model for _ in range(200)]
    assert 90 <= picks.count(A) <= 150 and 50 <= picks.count(B) <= 110  # about 60:40


def test_a_model_with_few_servers_has_every_one_publish_and_many_a_target_number():
    assert publish_probability(5, target=16) == 1.0
    assert publish_probability(16, target=16) == 1.0
    assert publish_probability(1600, target=16) == 0.01
    assert record_weight(1.0, periods_live=3) == 1.0  # every server always has a live record
    # Published one period in a hundred, counted for three: live about 3% of the time.
    assert 33.0 < record_weight(0.01, periods_live=3) < 34.0


def test_sampled_records_estimate_a_models_demand_and_servers():
    """30,000 servers of one model, each asked 2 requests a minute, publishing with
    probability 16/30,000 a period: the book, from the ~48 records live at any time,
    estimates the model's demand (60,000/min) and servers (30,000) within 20%."""
    rng = random.Random(7)
    servers, target, period, periods_live = 30_000, 16, 60.0, 3
    p = publish_probability(servers, target)
    book = DemandBook(record_ttl_s=periods_live * period)
    published = 0
    for step in range(20):
        now = step * period
        for i in range(servers):
            if rng.random() < p:
                published += 1
                book.add(
                    DemandRecord(
                        PeerId(f"s{i}"),
                        A,
                        requests_per_min=2,
                        busy_per_min=0,
                        at=now,
                        weight=record_weight(p, periods_live),
                        from_server=True,
                    )
                )
    now = 19 * period + 1
    assert published / 20 < 2 * target  # the topic's traffic: about `target` a period
    assert abs(book.demand(A, now) - 60_000) < 0.2 * 60_000
    assert abs(book.server_count(A, now) - servers) < 0.2 * servers
    assert book.server_count(A, now, besides=PeerId("nobody")) == book.server_count(A, now)


def test_servers_counted_from_sampled_records_make_an_idle_node_see_a_model_as_served():
    """A model with much demand but, by the weighted records, many servers is less
    attractive than one with a little less demand and one server."""
    book = DemandBook()
    for i in range(4):  # 4 records standing for 10 servers each: 40 servers of A
        book.add(DemandRecord(PeerId(f"a{i}"), A, 100, 0, at=0, weight=10, from_server=True))
    book.add(DemandRecord(PeerId("b0"), B, 300, 0, at=0, from_server=True))
    assert book.demand(A, 1) == 4000 and book.server_count(A, 1) == 40
    choice = choose(book, 1, current=None, candidates=(A, B))
    assert choice.model == B  # 300 for 2 servers beats 4000 for 41
