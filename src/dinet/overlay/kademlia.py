"""Kademlia, sans-IO: a routing table, an iterative lookup and a provider-record store.

No sockets and no clock: the caller sends the `Query` actions a `Lookup` returns, feeds
back what the peers answered (`on_response`) or that they did not (`on_timeout`), and
passes time in as `now` seconds. The same code runs in the simulator
(bench/simulate.py); the real node uses py-libp2p's own DHT (dinet.p2p._dht), so this
core follows py-libp2p 0.8.1's parameters to make the simulation speak for the node:

- `BUCKET_SIZE` 20 (`kad_dht.common.BUCKET_SIZE`, k) and 256-bit keys: sha256 of a peer
  id, sha256 of a record key (`routing_table.peer_id_to_key`, `find_local_closest_peers`);
- `ALPHA` 10 queries in flight (`common.ALPHA`; the Kademlia paper's 3 is a parameter
  here), `BETA` 3 of the closest queried before a lookup may stop for lack of progress
  (`common.BETA`), `QUERY_TIMEOUT_S` 3 (py-libp2p's `common.QUERY_TIMEOUT` is 10; dinet sets 3);
- provider records live `PROVIDER_TTL_S` 48 h and are republished every
  `PROVIDER_REPUBLISH_S` 22 h (`provider_store.PROVIDER_RECORD_*`); the routing table is
  refreshed every `REFRESH_INTERVAL_S` 600 s by a lookup of the node's own id and one of
  a random key per non-empty bucket (`kad_dht.ROUTING_TABLE_REFRESH_INTERVAL`,
  `peer_routing.refresh_routing_table`; dinet runs py-libp2p without its random walk).

Where the two differ: py-libp2p splits only the bucket holding its own id, so its
nearest bucket gathers every peer closer than the last split; here bucket i holds the
peers at XOR distance [2^i, 2^(i+1)), which keeps the same far buckets and may keep a
few more of the nearest peers. py-libp2p's lookup runs in rounds of up to ALPHA and
waits for each round; this one keeps ALPHA in flight (the sliding window py-libp2p's own
comments aim for). py-libp2p finds providers by a node lookup first and then asks the
nearest peers; this lookup asks every peer on the way for providers too (as go-libp2p
does), so it can stop as soon as it has enough.

Keys are ints (`peer_key`, `record_key`); peer ids are `PeerId` strings.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache

from dinet.wire.ids import PeerId

KEY_BITS = 256
BUCKET_SIZE = 20
ALPHA = 10
BETA = 3
QUERY_TIMEOUT_S = 3.0  # dinet's, set on py-libp2p's DHT in p2p/_dht.py (py-libp2p's own: 10)
PROVIDER_TTL_S = 48 * 3600.0
PROVIDER_REPUBLISH_S = 22 * 3600.0
REFRESH_INTERVAL_S = 600.0


@lru_cache(maxsize=1 << 17)
def peer_key(peer: PeerId) -> int:
    """A peer's place in the key space (cached: the same ids are looked at again and again)."""
    return int.from_bytes(hashlib.sha256(peer.encode()).digest(), "big")


def record_key(key: bytes | str) -> int:
    """The place of a record (e.g. a model's provider record) in the key space."""
    data = key.encode() if isinstance(key, str) else key
    return int.from_bytes(hashlib.sha256(data).digest(), "big")


def bucket_of(me: int, other: int) -> int:
    """The index of the bucket `other` belongs to in `me`'s table (-1: it is `me`)."""
    return (me ^ other).bit_length() - 1


@dataclass(frozen=True)
class PingBeforeEvict:
    """The bucket of `candidate` is full: ping `oldest`, then call `RoutingTable.on_ping`."""

    oldest: PeerId
    candidate: PeerId


class RoutingTable:
    """k-buckets over XOR distance; each bucket is ordered least recently seen first."""

    def __init__(self, me: PeerId, *, bucket_size: int = BUCKET_SIZE) -> None:
        self.me = me
        self.bucket_size = bucket_size
        self._my_key = peer_key(me)
        # Lists, not ordered dicts: at 30,000 simulated nodes the table's size matters
        # more than the O(k) cost of moving a peer to the end.
        self._buckets: dict[int, list[PeerId]] = {}
        self._pending: dict[int, PingBeforeEvict] = {}  # at most one eviction per bucket

    def seen(self, peer: PeerId) -> PingBeforeEvict | None:
        """`peer` was heard from: it becomes the most recently seen of its bucket.

        A new peer joins a bucket with room; for a full one the caller is asked to ping
        the least recently seen peer first (live old peers are kept, as in the paper).
        While that ping is pending, other newcomers to the bucket are dropped."""
        index = bucket_of(self._my_key, peer_key(peer))
        if index < 0:
            return None
        bucket = self._buckets.setdefault(index, [])
        if peer in bucket:
            bucket.remove(peer)
            bucket.append(peer)
            return None
        if len(bucket) < self.bucket_size:
            bucket.append(peer)
            return None
        if index in self._pending:
            return None
        action = PingBeforeEvict(oldest=bucket[0], candidate=peer)
        self._pending[index] = action
        return action

    def on_ping(self, oldest: PeerId, alive: bool) -> None:
        """The answer to a `PingBeforeEvict`: a live peer stays, a dead one makes room."""
        index = bucket_of(self._my_key, peer_key(oldest))
        action = self._pending.pop(index, None)
        if action is None or action.oldest != oldest:
            return
        bucket = self._buckets.get(index, [])
        if alive:
            if oldest in bucket:
                bucket.remove(oldest)
                bucket.append(oldest)
            return
        if oldest in bucket:
            bucket.remove(oldest)
        if action.candidate not in bucket and len(bucket) < self.bucket_size:
            bucket.append(action.candidate)

    def remove(self, peer: PeerId) -> None:
        """Forget `peer` (a query to it failed: py-libp2p does the same)."""
        index = bucket_of(self._my_key, peer_key(peer))
        bucket = self._buckets.get(index)
        if bucket and peer in bucket:
            bucket.remove(peer)

    def closest(self, key: int, count: int = BUCKET_SIZE) -> list[PeerId]:
        """The `count` peers nearest `key` by XOR distance, nearest first.

        Buckets come in distance order, so only a few are sorted: the bucket `key` falls
        in holds the nearest (distance below 2^j), all lower buckets the next (between 2^j
        and 2^(j+1)), then each higher bucket i (top bit i)."""
        j = bucket_of(self._my_key, key)
        out: list[PeerId] = []

        def take(group: list[PeerId]) -> None:
            group.sort(key=lambda peer: peer_key(peer) ^ key)
            out.extend(group[: count - len(out)])

        take(list(self._buckets.get(j, ())))
        if len(out) < count:
            take([peer for i, bucket in self._buckets.items() if i < j for peer in bucket])
        for i in sorted(i for i in self._buckets if i > j):
            if len(out) >= count:
                break
            take(list(self._buckets[i]))
        return out

    def bucket_sizes(self) -> dict[int, int]:
        """Occupancy by bucket index (non-empty buckets only)."""
        return {index: len(peers) for index, peers in sorted(self._buckets.items()) if peers}

    def refresh_targets(self, key_for_bucket: Iterable[int]) -> list[int]:
        """Keys to look up on a refresh: `key_for_bucket` gives one random int per
        non-empty bucket (the caller's randomness); each is moved into its bucket."""
        targets = []
        for index, noise in zip(self.bucket_sizes(), key_for_bucket, strict=False):
            # Same prefix as me above bit `index`, the opposite bit at `index`, any bits below.
            low = noise & ((1 << index) - 1)
            targets.append(((self._my_key >> index) ^ 1) << index | low)
        return targets

    def __contains__(self, peer: object) -> bool:
        if not isinstance(peer, str):
            return False
        bucket = self._buckets.get(bucket_of(self._my_key, peer_key(PeerId(peer))))
        return bucket is not None and peer in bucket

    def __iter__(self) -> Iterator[PeerId]:
        for bucket in self._buckets.values():
            yield from bucket

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self._buckets.values())


@dataclass(frozen=True)
class Query:
    """Ask `peer` for the peers it knows nearest `key` (and, in a provider lookup, for
    the providers of `key` it holds)."""

    peer: PeerId
    key: int


_NEW, _ASKED, _ANSWERED, _FAILED = range(4)


class Lookup:
    """An iterative lookup of `key`: FIND_NODE, or GET_PROVIDERS when `want` > 0.

    Keeps up to `alpha` queries in flight to the nearest peers not yet asked. Stops when
    the `k` nearest known peers have all answered; when none is left to ask; when
    `alpha` answers in a row brought no peer nearer than the nearest known and the `beta`
    nearest have answered (py-libp2p's "no improvement" rule, with its BETA); and, for
    providers, as soon as `want` providers are known. Answers after the end are ignored.

    `hops` is the longest chain of answers that led to the result: a seed's answer is
    hop 1, an answer from a peer that hop 1 named is hop 2, and so on.
    """

    def __init__(
        self,
        key: int,
        seeds: Iterable[PeerId],
        *,
        want: int = 0,
        k: int = BUCKET_SIZE,
        alpha: int = ALPHA,
        beta: int = BETA,
        me: PeerId | None = None,
    ) -> None:
        self.key = key
        self.want = want
        self.k = k
        self.alpha = alpha
        self.beta = beta
        self._me = me
        self._state: dict[PeerId, int] = {}
        self._depth: dict[PeerId, int] = {}  # hops of the answer that named this peer
        self._known: list[tuple[int, PeerId]] = []  # (distance, peer), sorted when read
        self._dirty = False
        self._in_flight = 0
        self._fruitless = 0
        self.providers: list[PeerId] = []
        self._provider_hops = 0
        self.queries = 0
        self.answers = 0
        self.done = False
        for peer in seeds:
            self._learn(peer, 0)

    def start(self) -> list[Query]:
        """The first queries (or none, and the lookup is over, without seeds)."""
        return self._next()

    def on_response(
        self, peer: PeerId, closer: Iterable[PeerId], providers: Iterable[PeerId] = ()
    ) -> list[Query]:
        """`peer` answered with the peers it knows nearest the key, and any providers."""
        if self.done or self._state.get(peer) != _ASKED:
            return []
        self._state[peer] = _ANSWERED
        self._in_flight -= 1
        self.answers += 1
        hop = self._depth[peer] + 1
        before = self._nearest(1)
        for other in closer:
            self._learn(other, hop)
        self._fruitless = 0 if self._nearest(1) != before else self._fruitless + 1
        if self.want > 0:
            for provider in providers:
                if provider not in self.providers:
                    self.providers.append(provider)
                    if len(self.providers) <= self.want:
                        self._provider_hops = max(self._provider_hops, hop)
            if len(self.providers) >= self.want:
                self.done = True
                return []
        return self._next()

    def on_timeout(self, peer: PeerId) -> list[Query]:
        """`peer` did not answer in time (or could not be reached)."""
        if self.done or self._state.get(peer) != _ASKED:
            return []
        self._state[peer] = _FAILED
        self._in_flight -= 1
        return self._next()

    @property
    def closest(self) -> list[PeerId]:
        """The `k` nearest peers that answered, nearest first."""
        return [peer for _, peer in self._sorted() if self._state[peer] == _ANSWERED][: self.k]

    @property
    def succeeded(self) -> bool:
        """A provider lookup found a provider; a node lookup heard from at least one peer."""
        if not self.done:
            return False
        return bool(self.providers) if self.want > 0 else self.answers > 0

    @property
    def hops(self) -> int:
        if self.want > 0 and self.providers:
            return self._provider_hops
        return max((self._depth[peer] + 1 for peer in self.closest), default=0)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def _learn(self, peer: PeerId, depth: int) -> None:
        if peer == self._me or peer in self._state:
            return
        self._state[peer] = _NEW
        self._depth[peer] = depth
        self._known.append((peer_key(peer) ^ self.key, peer))
        self._dirty = True

    def _sorted(self) -> list[tuple[int, PeerId]]:
        if self._dirty:
            self._known.sort()
            self._dirty = False
        return self._known

    def _nearest(self, count: int) -> list[PeerId]:
        """The `count` nearest peers not known to have failed."""
        out = []
        for _, peer in self._sorted():
            if self._state[peer] != _FAILED:
                out.append(peer)
                if len(out) == count:
                    break
        return out

    def _next(self) -> list[Query]:
        nearest = self._nearest(self.k)
        if nearest and all(self._state[p] == _ANSWERED for p in nearest):
            self.done = True
            return []
        if self._fruitless >= self.alpha and all(self._state[p] == _ANSWERED for p in nearest[: self.beta]):
            self.done = True
            return []
        queries = []
        for peer in nearest:
            if self._in_flight >= self.alpha:
                break
            if self._state[peer] == _NEW:
                self._state[peer] = _ASKED
                self._in_flight += 1
                self.queries += 1
                queries.append(Query(peer, self.key))
        if not queries and self._in_flight == 0:
            self.done = True  # nobody left to ask
        return queries


class ProviderStore:
    """Provider records by key: who announced it, until when."""

    def __init__(self, ttl_s: float = PROVIDER_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._records: dict[int, dict[PeerId, float]] = {}

    def add(self, key: int, provider: PeerId, now: float) -> None:
        """Record (or renew) `provider` for `key`, valid for `ttl_s` from `now`."""
        self._records.setdefault(key, {})[provider] = now + self.ttl_s

    def get(self, key: int, now: float) -> list[PeerId]:
        """The providers of `key` whose records have not expired, newest first."""
        records = self._records.get(key, {})
        live = [(until, peer) for peer, until in records.items() if until > now]
        return [peer for _, peer in sorted(live, reverse=True)]

    def expire(self, now: float) -> int:
        """Drop expired records; returns how many went."""
        dropped = 0
        for key in list(self._records):
            records = self._records[key]
            for peer in [p for p, until in records.items() if until <= now]:
                del records[peer]
                dropped += 1
            if not records:
                del self._records[key]
        return dropped

    def __len__(self) -> int:
        return sum(len(records) for records in self._records.values())
