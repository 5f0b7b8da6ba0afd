"""The simulated network of bench/simulate.py: virtual time, latency, nodes and their DHT.

One process, one heap of events; nodes are integers with a few parallel lists (at 30,000
nodes, objects per node would cost more memory than their routing tables). The DHT is
the project's own core, `dinet.overlay.kademlia`: this module only carries its `Query`
actions across the simulated links and feeds the answers back.

Latency model (one way): access delay of the sender + access delay of the receiver + the
path between their regions. Within a region the path takes 5-20 ms (fixed per pair of
nodes); between regions, half the median round trip of `RTT_MS`, rounded from public
ping tables between cloud regions (cloudping.co's AWS inter-region medians and
WonderNetwork's city-to-city pings, 2024). Access delays are uniform in 1-15 ms (home
and office broadband's last mile). A query costs a round trip plus 1 ms of work.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from dinet.overlay.kademlia import QUERY_TIMEOUT_S, Lookup, ProviderStore, Query, RoutingTable, peer_key
from dinet.wire.ids import PeerId

REGIONS = ("us-east", "us-west", "europe", "asia-east", "asia-southeast", "south-america")
REGION_WEIGHTS = (0.25, 0.15, 0.30, 0.12, 0.10, 0.08)
# Median round trips in ms between the regions above (Virginia, Oregon, Frankfurt, Tokyo,
# Singapore, Sao Paulo): symmetric, so only the upper triangle is written.
_RTT_UPPER = {
    (0, 1): 65, (0, 2): 90, (0, 3): 150, (0, 4): 220, (0, 5): 115,
    (1, 2): 145, (1, 3): 100, (1, 4): 165, (1, 5): 175,
    (2, 3): 225, (2, 4): 160, (2, 5): 200,
    (3, 4): 70, (3, 5): 255,
    (4, 5): 325,
}  # fmt: skip
RTT_MS = {**_RTT_UPPER, **{(b, a): ms for (a, b), ms in _RTT_UPPER.items()}}
ACCESS_MS = (1.0, 15.0)
INTRA_REGION_MS = (5.0, 20.0)
WORK_S = 0.001

# Sizes of the DHT's protobuf messages (py-libp2p sends them; we have no pydantic model to
# serialise), estimated from their fields: a peer entry is a 38-byte peer id and two
# ~20-byte multiaddrs with tags (~90 bytes); every request carries the sender's signed
# peer record (~250 bytes); each exchange opens a stream (multistream-select and yamux
# frames, ~60 bytes each way).
STREAM_BYTES = 60
PEER_ENTRY_BYTES = 90
SENDER_RECORD_BYTES = 250
DHT_REQUEST_BYTES = STREAM_BYTES + 2 + 34 + SENDER_RECORD_BYTES
PING_BYTES = STREAM_BYTES + 32  # libp2p ping: 32 random bytes each way
MAX_PROVIDERS_PER_ANSWER = 20  # py-libp2p's MAX_PROVIDERS_PER_MSG


def dht_answer_bytes(closer: int, providers: int) -> int:
    return STREAM_BYTES + 2 + 34 + SENDER_RECORD_BYTES + PEER_ENTRY_BYTES * (closer + providers)


@dataclass
class Traffic:
    """Messages and bytes sent, by category."""

    messages: Counter[str] = field(default_factory=Counter)
    bytes: Counter[str] = field(default_factory=Counter)

    def add(self, category: str, size: int, count: int = 1) -> None:
        self.messages[category] += count
        self.bytes[category] += size * count


@dataclass
class LookupResult:
    lookup: Lookup
    started: float
    finished: float


class Network:
    """Nodes (by index), their regions and links, the event queue and the DHT."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.now = 0.0
        self._events: list[tuple[float, int, Callable[..., None], tuple[object, ...]]] = []
        self._seq = 0
        self.ids: list[PeerId] = []
        self.index: dict[PeerId, int] = {}
        self.region: list[int] = []
        self.access_s: list[float] = []
        self.alive: list[bool] = []
        self.tables: list[RoutingTable | None] = []
        self.stores: dict[int, ProviderStore] = {}
        self.traffic = Traffic()

    # --- time ---

    def at(self, when: float, action: Callable[..., None], *args: object) -> None:
        self._seq += 1
        heapq.heappush(self._events, (when, self._seq, action, args))

    def run_until(self, end: float) -> None:
        while self._events and self._events[0][0] <= end:
            when, _, action, args = heapq.heappop(self._events)
            self.now = when
            action(*args)
        self.now = end

    # --- nodes and links ---

    def add_node(self) -> int:
        i = len(self.ids)
        peer = PeerId(f"n{i}")
        self.ids.append(peer)
        self.index[peer] = i
        self.region.append(self.rng.choices(range(len(REGIONS)), REGION_WEIGHTS)[0])
        self.access_s.append(self.rng.uniform(*ACCESS_MS) / 1000)
        self.alive.append(True)
        self.tables.append(RoutingTable(peer))
        return i

    def delay(self, a: int, b: int) -> float:
        """One-way delay from node a to node b, in seconds."""
        ra, rb = self.region[a], self.region[b]
        if ra == rb:
            # Fixed per pair, without storing pairs: a cheap symmetric hash of the two.
            mix = ((min(a, b) * 2654435761) ^ (max(a, b) * 40503)) % 1000 / 1000
            path_ms = INTRA_REGION_MS[0] + mix * (INTRA_REGION_MS[1] - INTRA_REGION_MS[0])
        else:
            path_ms = RTT_MS[(ra, rb)] / 2
        return self.access_s[a] + self.access_s[b] + path_ms / 1000

    def store(self, i: int) -> ProviderStore:
        store = self.stores.get(i)
        if store is None:
            store = self.stores[i] = ProviderStore()
        return store

    def seen(self, i: int, other: int) -> None:
        """Node i heard from node `other`: its routing table learns it (ping before evict)."""
        table = self.tables[i]
        if table is None:
            return
        action = table.seen(self.ids[other])
        if action is not None:
            # The ping's answer is applied at once (a round trip early): it only decides
            # which of two peers the bucket keeps.
            self.traffic.add("dht", PING_BYTES, 2)
            table.on_ping(action.oldest, self.alive[self.index[action.oldest]])

    # --- the DHT ---

    def lookup(
        self,
        origin: int,
        key: int,
        *,
        want: int = 0,
        done: Callable[[LookupResult], None] | None = None,
        category: str = "dht",
    ) -> None:
        """Run the core's iterative lookup from `origin`; `done` gets the result."""
        table = self.tables[origin]
        assert table is not None
        lookup = Lookup(key, table.closest(key), want=want, me=self.ids[origin])
        state = {"reported": False}
        started = self.now

        def report() -> None:
            if lookup.done and not state["reported"]:
                state["reported"] = True
                if done is not None:
                    done(LookupResult(lookup, started, self.now))

        def send(queries: list[Query]) -> None:
            for query in queries:
                target = self.index[query.peer]
                self.traffic.add(category, DHT_REQUEST_BYTES)
                if self.alive[target]:
                    self.at(self.now + self.delay(origin, target), arrive, target, self.now)
                else:
                    self.at(self.now + QUERY_TIMEOUT_S, timeout, target)
            report()

        def arrive(target: int, sent_at: float) -> None:
            if not self.alive[target]:
                self.at(sent_at + QUERY_TIMEOUT_S, timeout, target)  # it died on the way
                return
            self.seen(target, origin)
            target_table = self.tables[target]
            closer = target_table.closest(key) if target_table is not None else []
            found: list[PeerId] = []
            if want > 0 and target in self.stores:
                found = self.stores[target].get(key, self.now)[:MAX_PROVIDERS_PER_ANSWER]
            self.traffic.add(category, dht_answer_bytes(len(closer), len(found)))
            self.at(self.now + WORK_S + self.delay(target, origin), answer, target, closer, found)

        def answer(target: int, closer: list[PeerId], found: list[PeerId]) -> None:
            if not self.alive[origin]:
                return
            self.seen(origin, target)
            send(lookup.on_response(self.ids[target], closer, found))

        def timeout(target: int) -> None:
            if not self.alive[origin]:
                return
            origin_table = self.tables[origin]
            if origin_table is not None:
                origin_table.remove(self.ids[target])
            send(lookup.on_timeout(self.ids[target]))

        send(lookup.start())

    def provide(self, origin: int, key: int, done: Callable[[], None] | None = None) -> None:
        """Announce `origin` as a provider of `key`: find the k nearest, send them ADD_PROVIDER."""
        self.store(origin).add(key, self.ids[origin], self.now)

        def found(result: LookupResult) -> None:
            for peer in result.lookup.closest:
                target = self.index[peer]
                self.traffic.add("dht", DHT_REQUEST_BYTES + PEER_ENTRY_BYTES)  # ADD_PROVIDER
                self.at(self.now + self.delay(origin, target), stored, target)
            if done is not None:
                done()

        def stored(target: int) -> None:
            if self.alive[target]:
                self.store(target).add(key, self.ids[origin], self.now)

        self.lookup(origin, key, done=found)

    def place_records(self, key: int, providers: list[int], live: list[int]) -> None:
        """Provider records as if announced before the run: on the k nodes nearest `key`."""
        nearest = heapq.nsmallest(20, live, key=lambda i: peer_key(self.ids[i]) ^ key)
        for holder in nearest:
            store = self.store(holder)
            for provider in providers:
                store.add(key, self.ids[provider], self.now)
