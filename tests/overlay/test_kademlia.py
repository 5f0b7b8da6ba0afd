"""The Kademlia core: routing table, iterative lookups and provider records, on networks
of a few hundred simulated peers driven in-process (no network: the core does no I/O)."""

from __future__ import annotations

import math
import random

from dinet.overlay.kademlia import (
    BUCKET_SIZE,
    Lookup,
    PingBeforeEvict,
    ProviderStore,
    Query,
    RoutingTable,
    bucket_of,
    peer_key,
    record_key,
)
from dinet.wire.ids import PeerId


def ids(n: int, prefix: str = "peer") -> list[PeerId]:
    return [PeerId(f"{prefix}-{i}") for i in range(n)]


def network(n: int, seed: int = 1) -> dict[PeerId, RoutingTable]:
    """Every peer has heard of every other, in a random order (full buckets keep the first)."""
    rng = random.Random(seed)
    peers = ids(n)
    tables = {p: RoutingTable(p) for p in peers}
    for me, table in tables.items():
        for other in rng.sample(peers, n):
            if other != me:
                table.seen(other)
    return tables


def run(lookup: Lookup, tables: dict[PeerId, RoutingTable], dead=frozenset(), providers=None) -> Lookup:
    """Deliver every query at once, in order; dead peers time out."""
    queue: list[Query] = list(lookup.start())
    while queue:
        query = queue.pop(0)
        if query.peer in dead:
            queue += lookup.on_timeout(query.peer)
            continue
        found = (providers or {}).get(query.key, [])
        queue += lookup.on_response(query.peer, tables[query.peer].closest(query.key), found)
    return lookup


def true_closest(key: int, peers, count: int = BUCKET_SIZE) -> list[PeerId]:
    return sorted(peers, key=lambda p: peer_key(p) ^ key)[:count]


def full_bucket_table() -> tuple[RoutingTable, list[PeerId]]:
    """A table (bucket size 2) and three newcomers that all fall in one of its buckets."""
    table = RoutingTable(PeerId("me"), bucket_size=2)
    me = peer_key(PeerId("me"))
    by_bucket: dict[int, list[PeerId]] = {}
    for peer in ids(200):
        by_bucket.setdefault(bucket_of(me, peer_key(peer)), []).append(peer)
    return table, by_bucket[255][:3]  # half of all keys land in the farthest bucket


def test_a_full_bucket_asks_to_ping_its_least_recently_seen_peer():
    table, (a, b, c) = full_bucket_table()
    assert table.seen(a) is None and table.seen(b) is None
    table.seen(a)  # a is now the most recently seen, b the least
    assert table.seen(c) == PingBeforeEvict(oldest=b, candidate=c)


def test_a_live_oldest_peer_stays_and_the_newcomer_is_dropped():
    table, (a, b, c) = full_bucket_table()
    table.seen(a), table.seen(b)
    table.seen(c)
    table.on_ping(a, alive=True)
    assert a in table and b in table and c not in table


def test_a_dead_oldest_peer_makes_room_for_the_newcomer():
    table, (a, b, c) = full_bucket_table()
    table.seen(a), table.seen(b)
    table.seen(c)
    table.on_ping(a, alive=False)
    assert a not in table and b in table and c in table


def test_buckets_never_exceed_k_and_far_buckets_fill():
    tables = network(300)
    table = next(iter(tables.values()))
    sizes = table.bucket_sizes()
    assert max(sizes.values()) <= BUCKET_SIZE
    assert sizes[255] == BUCKET_SIZE  # half the network is that far: the bucket is full
    # The table stays near k * log2(n / k), far from the whole network.
    assert len(table) < BUCKET_SIZE * (math.log2(300 / BUCKET_SIZE) + 4)


def test_closest_is_ordered_by_xor_distance():
    table = RoutingTable(PeerId("me"))
    for peer in ids(60):
        table.seen(peer)
    key = record_key("some model")
    got = table.closest(key, 5)
    assert got == true_closest(key, list(table), 5)


def test_refresh_targets_fall_in_their_buckets():
    table = RoutingTable(PeerId("me"))
    for peer in ids(200):
        table.seen(peer)
    rng = random.Random(3)
    targets = table.refresh_targets(rng.getrandbits(256) for _ in range(300))
    assert [bucket_of(peer_key(PeerId("me")), t) for t in targets] == list(table.bucket_sizes())


def test_find_node_finds_the_true_closest_in_few_hops():
    tables = network(500)
    peers = list(tables)
    rng = random.Random(5)
    for _ in range(20):
        me = rng.choice(peers)
        key = rng.getrandbits(256)
        lookup = run(Lookup(key, tables[me].closest(key), me=me), tables)
        assert lookup.done and lookup.succeeded
        truth = [p for p in true_closest(key, peers, BUCKET_SIZE + 1) if p != me][:BUCKET_SIZE]
        assert lookup.closest[:3] == truth[:3]
        assert 1 <= lookup.hops <= math.log2(500) + 2


def test_a_lookup_routes_around_dead_peers():
    tables = network(400)
    peers = list(tables)
    rng = random.Random(8)
    dead = frozenset(rng.sample(peers, 80))
    live = [p for p in peers if p not in dead]
    for _ in range(10):
        me = rng.choice(live)
        key = rng.getrandbits(256)
        lookup = run(Lookup(key, tables[me].closest(key), me=me), tables, dead=dead)
        assert lookup.succeeded
        assert not dead & set(lookup.closest)
        truth = [p for p in true_closest(key, live, 2) if p != me]
        assert lookup.closest[0] == truth[0]


def test_a_provider_lookup_stops_once_it_has_enough():
    tables = network(500)
    peers = list(tables)
    key = record_key("model-hash")
    holders = true_closest(key, peers)  # the provider records sit on the peers nearest the key
    providers = {key: [PeerId("server-1"), PeerId("server-2")]}  # only the holders answer with them

    me = next(p for p in peers if p not in holders)
    full = run(Lookup(key, tables[me].closest(key), me=me), tables)
    wanted = Lookup(key, tables[me].closest(key), want=1, me=me)
    queue = list(wanted.start())
    while queue:
        query = queue.pop(0)
        found = providers[key] if query.peer in holders else []
        queue += wanted.on_response(query.peer, tables[query.peer].closest(query.key), found)
    assert wanted.succeeded and wanted.providers[0] in providers[key]
    assert wanted.queries <= full.queries
    assert wanted.hops >= 1


def test_a_provider_lookup_without_providers_fails():
    tables = network(200)
    me = next(iter(tables))
    key = record_key("nobody serves this")
    lookup = run(Lookup(key, tables[me].closest(key), want=1, me=me), tables)
    assert lookup.done and not lookup.succeeded and lookup.providers == []


def test_a_lookup_without_seeds_ends_at_once_unsuccessful():
    lookup = Lookup(123, [])
    assert lookup.start() == [] and lookup.done and not lookup.succeeded


def test_late_and_unasked_answers_are_ignored():
    tables = network(100)
    me = next(iter(tables))
    key = record_key("k")
    lookup = Lookup(key, tables[me].closest(key), want=1, me=me)
    first = lookup.start()
    assert lookup.on_response(PeerId("stranger"), [PeerId("x")]) == []
    lookup.on_response(first[0].peer, [], [PeerId("server")])
    assert lookup.done
    assert lookup.on_response(first[1].peer, [PeerId("y")], [PeerId("other")]) == []
    assert lookup.providers == [PeerId("server")]


def test_alpha_bounds_the_queries_in_flight():
    tables = network(200)
    me = next(iter(tables))
    key = record_key("k")
    lookup = Lookup(key, tables[me].closest(key), alpha=3, me=me)
    assert len(lookup.start()) == 3 and lookup.in_flight == 3


def test_provider_records_expire_and_renew():
    store = ProviderStore(ttl_s=100)
    key = record_key("m")
    store.add(key, PeerId("a"), now=0)
    store.add(key, PeerId("b"), now=50)
    assert store.get(key, now=60) == ["b", "a"]
    assert store.get(key, now=120) == ["b"]
    store.add(key, PeerId("a"), now=130)  # renewed
    assert store.expire(now=160) == 1  # b went
    assert store.get(key, now=160) == ["a"] and len(store) == 1
    assert store.expire(now=1000) == 1 and len(store) == 0


def test_closest_agrees_with_sorting_the_whole_table():
    tables = network(400)
    rng = random.Random(11)
    for table in list(tables.values())[:20]:
        for key in [rng.getrandbits(256), peer_key(table.me) ^ rng.getrandbits(8), peer_key(table.me)]:
            for count in (1, 5, 20, 60):
                assert table.closest(key, count) == true_closest(key, list(table), count)
