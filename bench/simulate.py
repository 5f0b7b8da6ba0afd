"""A discrete-event simulation of dinet at 1,000 to 30,000 nodes, driving the project's cores.

    PYTHONPATH=src:. .venv/bin/python bench/simulate.py [--sizes 1000,5000,30000] [--seconds 1800]
    PYTHONPATH=src:. .venv/bin/python bench/simulate.py --quick      # small, for the test

One process, virtual time. What runs is the project's own sans-IO code:
`dinet.overlay.kademlia` (every node's routing table, every lookup and provider record),
`dinet.overlay.swim` (each client watches the peers it uses), `dinet.overlay.demand`
(`--serve auto` nodes choosing a model) and `dinet.routing.select.rank_peers` (the
client's choice among providers). The network around them is a model (bench/_simnet.py
documents the latency model and the DHT message sizes).

The scenario, per network size N:
- Nodes in 6 regions; 10% serve one of 5 models (popularity 40/25/15/12/8%); decode
  speeds are lognormal, median 25 tokens/s (sigma 0.6, clipped to 3-200: CPUs to GPUs).
- Churn of 20% per hour: every node's session is exponential with a 5 h mean; the same
  rate of new nodes join through a random live bootstrap (a lookup of their own id, then
  one per bucket: what py-libp2p does on start), and 10% of them serve and announce a
  model. Leaving nodes vanish without a word.
- Routing tables at the start: for each node and bucket, min(k, peers in that bucket's
  key range) peers drawn at random and fed to the core's `RoutingTable.seen` (a
  shortcut with the same bucket occupancy as a join sequence, orders of magnitude
  faster at 30,000). Provider records of the initial servers start on the 20 live nodes
  nearest each key (as if announced before the run); later announcements are real.
- `--lookups` measured lookups from random live nodes at random times, half FIND_NODE of
  a random key (checked against the true nearest live node), half GET_PROVIDERS of a model.
- Findability: three times in the run a random node starts serving a new model and
  announces it; random nodes look it up one after another until one finds it.
- 200 clients ask 1 request/minute each (128 tokens) for a model by popularity: find
  providers (GET_PROVIDERS, cached 10 min), fetch their manifests, rank them with
  `rank_peers`, ask the best; a dead or departed peer costs `--failover-s` and the next is
  asked (mid-stream too: the answer continues elsewhere). Success = answered within
  120 s. Each client runs SWIM over the (at most 8) peers it uses and drops those it
  finds dead.
- 1% of nodes (at least 10) run `--serve auto`: they decide every minute with
  `choose_model` over a shared demand book, pull for `--pull-s`, then serve and announce.
  Demand per model follows popularity until half-time, when the least popular model's
  demand jumps to the most popular's. "Supply follows" is the time from that shift until
  the auto nodes on that model first make 80% of the way from their number at the shift
  to their number at the end (pull time included).
- Per-node cost: the DHT's background (refreshes every 600 s, run by a sample of
  `--refresh-sample` nodes, and the pings that guard full buckets), SWIM per client, and
  the demand records on the model topics (computed: about 8 of a model's servers publish
  a record every 5 minutes, as nodes do (`publish_probability`), each weighted for the others;
  each subscriber of the topic receives it ~1.5 times through GossipSub).

Prints a table and ends with ONE JSON line.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass, field

from bench._simnet import LookupResult, Network

from dinet.overlay.demand import DemandBook, DemandRecord, choose_model, publish_probability, record_weight
from dinet.overlay.kademlia import BUCKET_SIZE, REFRESH_INTERVAL_S, peer_key, record_key
from dinet.overlay.swim import Died, Ping, PingReq, Swim
from dinet.routing.select import PeerView, rank_peers
from dinet.wire.ids import ModelHash, PeerId, RequestId
from dinet.wire.manifest import Load, Manifest, ManifestQuery, ModelOffer, SignedManifest
from dinet.wire.messages import ChatMessage, GenerationParams, InferRequest

MODELS = tuple(ModelHash(f"{i:x}" * 64)[:64] for i in range(10, 15))
POPULARITY = (0.40, 0.25, 0.15, 0.12, 0.08)
SERVE_FRACTION = 0.10
CHURN_PER_HOUR = 0.20
CLIENTS = 200
REQUESTS_PER_CLIENT_MIN = 1.0
MAX_TOKENS = 128
TTFT_S = 0.3
REQUEST_DEADLINE_S = 120.0
CANDIDATE_CACHE_S = 600.0
SWIM_WATCH = 8
AUTO_FRACTION = 0.01
DECIDE_EVERY_S = 60.0
DEMAND_EVERY_S = 300.0  # a server's demand record period (the node's default `demand_every_s`)
GOSSIP_COPIES = 1.5  # GossipSub: each subscriber gets a message ~1.5 times (mesh duplicates, IHAVE)
DEMAND_PUBLISHERS = 8  # a model's servers publishing a demand record each period (the node's default)
DEMAND_RECORD_BYTES = 300  # kind, publisher id, model hash, two rates, time, signature (JSON)
SWIM_BASE_BYTES = 150  # a ping or ack: kind, ids, probe id, incarnation, stream overhead
SWIM_NEWS_BYTES = 80  # one news item: peer id, state, incarnation


def _request_bytes() -> int:
    """The size of a real InferRequest with a short chat prompt (our own pydantic message)."""
    params = GenerationParams(messages=(ChatMessage(role="user", content="x" * 400),), max_tokens=MAX_TOKENS)
    return len(
        InferRequest(request_id=RequestId("r" * 32), model_hash=MODELS[0], params=params).model_dump_json()
    )


def _manifest_bytes() -> tuple[int, int]:
    """Sizes of a real ManifestQuery and of a SignedManifest offering one model."""
    offer = ModelOffer(
        model_id="org/model-7b-q4", model_hash=MODELS[0], quantization="Q4_K_M", context=4096, layers=(0, 32)
    )
    manifest = Manifest(
        peer_id=PeerId("12D3KooW" + "x" * 44), version="dinet/0.1.0", region="europe",
        addrs=("/ip4/203.0.113.7/tcp/4001", "/ip4/203.0.113.7/udp/4001/quic-v1"), models=(offer,),
        max_concurrent=2, tokens_per_s=25.0, ttft_ms=300.0, price_per_token=0.0,
        load=Load(active=0, queued=0), issued_at=1.7e9, expires_at=1.7e9 + 30,
    )  # fmt: skip
    signed = SignedManifest(body=manifest.model_dump_json(), signature="s" * 88)
    return len(ManifestQuery(include_known=False).model_dump_json()), len(signed.model_dump_json())


REQUEST_BYTES = _request_bytes()
MANIFEST_QUERY_BYTES, MANIFEST_BYTES = _manifest_bytes()


@dataclass
class Settings:
    n: int
    seconds: float = 1800.0
    seed: int = 1
    lookups: int = 1000
    refresh_sample: int = 200
    clients: int = CLIENTS
    failover_s: float = 5.0
    pull_s: float = 120.0
    findability_trials: int = 3


@dataclass
class Results:
    lookup_hops: list[int] = field(default_factory=list)
    lookup_ms: list[float] = field(default_factory=list)
    lookup_ok: list[bool] = field(default_factory=list)
    nearest_ok: list[bool] = field(default_factory=list)
    findable_s: list[float] = field(default_factory=list)
    requests: int = 0
    answered: int = 0
    failovers: int = 0
    refreshes: int = 0
    supply_series: list[tuple[float, int]] = field(default_factory=list)


class Simulation:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.rng = random.Random(settings.seed)
        self.net = Network(self.rng)
        self.results = Results()
        self.speed: list[float] = []
        self.serving: list[ModelHash | None] = []
        self.death_at: list[float] = []
        self.book = DemandBook(record_ttl_s=3 * DEMAND_EVERY_S)  # as nodes keep them
        self.auto: list[int] = []
        self.auto_since: dict[int, float] = {}
        self.demand_shift_at = settings.seconds / 2
        self.swims: dict[int, Swim] = {}
        self.client_cache: dict[tuple[int, ModelHash], tuple[float, list[int]]] = {}
        self.refresh_nodes: set[int] = set()
        self._live_cache: list[int] | None = None

    # --- nodes ---

    def _new_node(self) -> int:
        i = self.net.add_node()
        self.speed.append(min(200.0, max(3.0, self.rng.lognormvariate(math.log(25.0), 0.6))))
        self.serving.append(None)
        session = self.rng.expovariate(CHURN_PER_HOUR / 3600)
        self.death_at.append(self.net.now + session)
        self.net.at(self.net.now + session, self._leave, i)
        return i

    def _leave(self, i: int) -> None:
        if i in self.swims or i in self.auto_since:
            self.death_at[i] = math.inf  # clients and auto nodes are the measured: they stay
            return
        self.net.alive[i] = False
        self._live_cache = None
        self.net.tables[i] = None  # its memory, not its entries in others' tables
        self.net.stores.pop(i, None)

    def _join(self) -> None:
        live = self._live()
        i = self._new_node()
        self._live_cache = None
        table = self.net.tables[i]
        assert table is not None
        table.seen(self.net.ids[self.rng.choice(live)])
        self.net.lookup(i, peer_key(self.net.ids[i]), done=lambda _r: self._refresh(i, then_serve=True))
        self.net.at(self.net.now + self.rng.expovariate(self._join_rate()), self._join)

    def _join_rate(self) -> float:
        return self.s.n * CHURN_PER_HOUR / 3600

    def _refresh(self, i: int, then_serve: bool = False) -> None:
        """py-libp2p's routing table refresh: its own id, then a random key per non-empty bucket."""
        table = self.net.tables[i]
        if table is None:
            return
        self.results.refreshes += 1
        category = "dht-refresh" if i in self.refresh_nodes else "dht-join"
        for key in table.refresh_targets(self.rng.getrandbits(256) for _ in range(256)):
            self.net.lookup(i, key, category=category)
        if then_serve and self.rng.random() < SERVE_FRACTION:
            model = self.rng.choices(MODELS, POPULARITY)[0]
            self.serving[i] = model
            self.net.provide(i, record_key(model))

    def _periodic_refresh(self, i: int) -> None:
        if not self.net.alive[i]:
            return
        self.net.lookup(i, peer_key(self.net.ids[i]), category="dht-refresh")
        self._refresh(i)
        self.net.at(self.net.now + REFRESH_INTERVAL_S, self._periodic_refresh, i)

    def _live(self) -> list[int]:
        if self._live_cache is None:
            self._live_cache = [i for i, up in enumerate(self.net.alive) if up]
        return self._live_cache

    # --- set-up ---

    def build(self) -> None:
        for _ in range(self.s.n):
            self._new_node()
        self._fill_tables()
        others = list(range(self.s.n))
        self.rng.shuffle(others)
        n_auto = max(10, int(self.s.n * AUTO_FRACTION))
        self.auto = others[:n_auto]
        clients = others[n_auto : n_auto + self.s.clients]
        rest = others[n_auto + self.s.clients :]
        for i in rest[: int(self.s.n * SERVE_FRACTION)]:
            self.serving[i] = self.rng.choices(MODELS, POPULARITY)[0]
        for model in MODELS:
            servers = [i for i in range(self.s.n) if self.serving[i] == model]
            self.net.place_records(record_key(model), servers, list(range(self.s.n)))
        for i in self.auto:
            self.auto_since[i] = 0.0
            self.net.at(self.rng.uniform(0, DECIDE_EVERY_S), self._decide, i)
        for c in clients:
            self.swims[c] = Swim(self.net.ids[c], rng=random.Random(self.rng.random()))
            self.net.at(self.rng.expovariate(REQUESTS_PER_CLIENT_MIN / 60), self._request, c)
        self.refresh_nodes = set(self.rng.sample(rest, min(self.s.refresh_sample, len(rest))))
        for i in self.refresh_nodes:
            self.net.at(self.rng.uniform(0, REFRESH_INTERVAL_S), self._periodic_refresh, i)
        self.net.at(self.rng.expovariate(self._join_rate()), self._join)
        for _ in range(self.s.lookups):
            self.net.at(self.rng.uniform(30, self.s.seconds - 30), self._measured_lookup)
        for trial in range(self.s.findability_trials):
            at = self.s.seconds * (0.2 + 0.6 * trial / max(1, self.s.findability_trials))
            self.net.at(at, self._new_model, trial)
        t = 0.0
        while t < self.s.seconds:
            self.net.at(t, self._publish_demand)
            t += DEMAND_EVERY_S

    def _fill_tables(self) -> None:
        """Each bucket gets min(k, peers in its key range), drawn at random (module doc)."""
        keys = sorted((peer_key(self.net.ids[i]), i) for i in range(self.s.n))
        sorted_keys = [k for k, _ in keys]
        deepest = max(0, 256 - int(math.log2(self.s.n)) - 16)
        for i in range(self.s.n):
            table = self.net.tables[i]
            assert table is not None
            me = peer_key(self.net.ids[i])
            for bucket in range(255, deepest - 1, -1):
                low = ((me >> bucket) ^ 1) << bucket
                lo = bisect.bisect_left(sorted_keys, low)
                hi = bisect.bisect_left(sorted_keys, low + (1 << bucket))
                for pos in self.rng.sample(range(lo, hi), min(BUCKET_SIZE, hi - lo)):
                    table.seen(self.net.ids[keys[pos][1]])

    # --- measured lookups and findability ---

    def _measured_lookup(self) -> None:
        origin = self.rng.choice(self._live())
        if self.rng.random() < 0.5:
            key = self.rng.getrandbits(256)
            truth = min(
                (i for i in self._live() if i != origin), key=lambda i: peer_key(self.net.ids[i]) ^ key
            )
            self.net.lookup(
                origin, key, done=lambda r: self._lookup_done(r, self.net.ids[truth]), category="measure"
            )
        else:
            key = record_key(self.rng.choices(MODELS, POPULARITY)[0])
            self.net.lookup(
                origin, key, want=1, done=lambda r: self._lookup_done(r, None), category="measure"
            )

    def _lookup_done(self, result: LookupResult, truth: PeerId | None) -> None:
        self.results.lookup_hops.append(result.lookup.hops)
        self.results.lookup_ms.append((result.finished - result.started) * 1000)
        self.results.lookup_ok.append(result.lookup.succeeded)
        if truth is not None:
            self.results.nearest_ok.append(bool(result.lookup.closest) and result.lookup.closest[0] == truth)

    def _new_model(self, trial: int) -> None:
        live = self._live()
        provider = self.rng.choice(live)
        key = record_key(f"new-model-{trial}")
        started = self.net.now
        self.net.provide(provider, key)

        def probe() -> None:
            self.net.lookup(self.rng.choice(self._live()), key, want=1, done=probed, category="measure")

        def probed(result: LookupResult) -> None:
            if result.lookup.succeeded:
                self.results.findable_s.append(self.net.now - started)
            elif self.net.now - started < 600:
                probe()

        probe()

    # --- requests ---

    def _request(self, client: int) -> None:
        self.net.at(self.net.now + self.rng.expovariate(REQUESTS_PER_CLIENT_MIN / 60), self._request, client)
        if self.net.now > self.s.seconds - REQUEST_DEADLINE_S:
            return  # its outcome would fall after the end
        self.results.requests += 1
        model = self.rng.choices(MODELS, POPULARITY)[0]
        started = self.net.now
        cached = self.client_cache.get((client, model))
        if cached and self.net.now - cached[0] < CANDIDATE_CACHE_S and cached[1]:
            self._ask(client, model, cached[1], started, refreshed=False)
        else:
            self._discover(client, model, started)

    def _discover(self, client: int, model: ModelHash, started: float) -> None:
        def found(result: LookupResult) -> None:
            providers = [self.net.index[p] for p in result.lookup.providers]
            answered = [p for p in providers if self.net.alive[p]]
            # A manifest says what its node serves now: records outlive a node's move to another model.
            answered = [p for p in answered if self.serving[p] == model]
            for p in providers:  # manifests fetched in parallel; the dead never answer
                self.net.traffic.add("discovery", MANIFEST_QUERY_BYTES)
                if self.net.alive[p]:
                    self.net.traffic.add("discovery", MANIFEST_BYTES)
            wait = max((2 * self.net.delay(client, p) for p in answered), default=0.0)
            ranked = self._rank(client, answered)
            self.client_cache[(client, model)] = (self.net.now, ranked)
            self.net.at(self.net.now + wait, self._ask, client, model, ranked, started, True)

        self.net.lookup(client, record_key(model), want=8, done=found, category="discovery")

    def _rank(self, client: int, peers: list[int]) -> list[int]:
        views = [
            PeerView(
                peer_id=self.net.ids[p],
                rtt_ms=2000 * self.net.delay(client, p),
                tokens_per_s=self.speed[p],
                ttft_ms=TTFT_S * 1000,
                active=0,
                queued=0,
                max_concurrent=1,
            )  # fmt: skip
            for p in peers
        ]
        ranked = rank_peers(views, MAX_TOKENS, region=str(self.net.region[client]))
        return [self.net.index[v.peer_id] for v in ranked]

    def _ask(
        self, client: int, model: ModelHash, candidates: list[int], started: float, refreshed: bool
    ) -> None:
        swim = self.swims[client]
        usable = [p for p in candidates if swim.state_of(self.net.ids[p]) != "dead"]
        for p in usable[:SWIM_WATCH]:
            swim.track(self.net.ids[p], self.net.now)
        self._schedule_swim(client)
        self._attempt(client, model, usable, 0, started, refreshed, MAX_TOKENS)

    def _attempt(
        self,
        client: int,
        model: ModelHash,
        order: list[int],
        at: int,
        started: float,
        refreshed: bool,
        left: int,
    ) -> None:
        if self.net.now - started > REQUEST_DEADLINE_S:
            return
        if at >= len(order):
            if not refreshed:  # every known candidate failed: look the model up afresh, once
                self.client_cache.pop((client, model), None)
                self._discover(client, model, started)
            return
        peer = order[at]
        self.net.traffic.add("requests", REQUEST_BYTES)
        if at > 0:
            self.results.failovers += 1
        if not self.net.alive[peer]:
            self.net.at(
                self.net.now + self.s.failover_s,
                self._attempt,
                client,
                model,
                order,
                at + 1,
                started,
                refreshed,
                left,
            )
            return
        rtt = 2 * self.net.delay(client, peer)
        if self.serving[peer] != model:  # it moved on: it refuses at once
            self.net.at(
                self.net.now + rtt, self._attempt, client, model, order, at + 1, started, refreshed, left
            )
            return
        finish = self.net.now + rtt + TTFT_S + left / self.speed[peer]
        if self.death_at[peer] < finish:  # it dies mid-answer: the rest continues elsewhere
            done_tokens = int(max(0.0, self.death_at[peer] - self.net.now - rtt - TTFT_S) * self.speed[peer])
            self.net.at(
                self.death_at[peer] + self.s.failover_s, self._attempt, client, model, order, at + 1, started,
                refreshed, max(1, left - done_tokens),
            )  # fmt: skip
            return
        self.net.at(finish, self._answered, started)

    def _answered(self, started: float) -> None:
        if self.net.now - started <= REQUEST_DEADLINE_S:
            self.results.answered += 1

    # --- SWIM for clients ---

    def _schedule_swim(self, client: int) -> None:
        swim = self.swims[client]
        at = swim.next_tick_at()
        if at is not None and not getattr(swim, "_sim_scheduled", False):
            swim._sim_scheduled = True  # type: ignore[attr-defined]
            self.net.at(max(at, self.net.now), self._swim_tick, client)

    def _swim_tick(self, client: int) -> None:
        swim = self.swims[client]
        swim._sim_scheduled = False  # type: ignore[attr-defined]
        now = self.net.now
        for action in swim.tick(now):
            if isinstance(action, Ping):
                self._swim_ping(client, action.target, action.probe_id, len(action.news))
            elif isinstance(action, PingReq):
                self._swim_ping_req(client, action)
            elif isinstance(action, Died):
                swim.untrack(action.peer)
        self._schedule_swim(client)

    def _swim_bytes(self, news: int) -> int:
        return SWIM_BASE_BYTES + SWIM_NEWS_BYTES * news

    def _swim_ping(self, client: int, target_id: str, probe_id: int, news: int) -> None:
        self.net.traffic.add("swim", self._swim_bytes(news))
        target = self.net.index[PeerId(target_id)]
        if not self.net.alive[target]:
            return
        rtt = 2 * self.net.delay(client, target)
        self.net.traffic.add("swim", self._swim_bytes(0))
        self.net.at(self.net.now + rtt, self._swim_ack, client, probe_id, target_id)

    def _swim_ack(self, client: int, probe_id: int, target_id: str) -> None:
        self.swims[client].on_ack(self.net.now, probe_id, target_id, ())

    def _swim_ping_req(self, client: int, action: PingReq) -> None:
        self.net.traffic.add("swim", self._swim_bytes(len(action.news)))
        via = self.net.index[PeerId(action.via)]
        target = self.net.index[PeerId(action.target)]
        if not (self.net.alive[via] and self.net.alive[target]):
            self.net.traffic.add("swim", self._swim_bytes(0), 1 if self.net.alive[via] else 0)
            return
        self.net.traffic.add("swim", self._swim_bytes(0), 3)  # via's ping, target's ack, via's relay
        rtt = 2 * (self.net.delay(client, via) + self.net.delay(via, target))
        self.net.at(self.net.now + rtt, self._swim_indirect_ack, client, action.probe_id, action.via)

    def _swim_indirect_ack(self, client: int, probe_id: int, via: str) -> None:
        self.swims[client].on_indirect_ack(self.net.now, probe_id, via, ())

    # --- supply follows demand ---

    def _demand(self, model: ModelHash, now: float) -> float:
        """Requests per minute for `model` across the network (the scenario's demand curve)."""
        total = self.s.n * 0.5
        if now >= self.demand_shift_at and model == MODELS[-1]:
            return total * POPULARITY[0]
        return total * POPULARITY[MODELS.index(model)]

    def _publish_demand(self) -> None:
        now = self.net.now
        for model in MODELS:
            servers = [i for i, m in enumerate(self.serving) if m == model and self.net.alive[i]]
            publishers = servers or [-1 - MODELS.index(model)]  # nobody serves it: clients see refusals
            rate = self._demand(model, now)
            # As nodes do: about DEMAND_PUBLISHERS of a model's servers publish each period,
            # and each record stands for the servers that did not.
            chance = publish_probability(len(servers), DEMAND_PUBLISHERS) if servers else 1.0
            weight = record_weight(chance, self.book.record_ttl_s / DEMAND_EVERY_S)
            for p in publishers:
                peer = self.net.ids[p] if p >= 0 else PeerId(f"client-of-{model[:4]}")
                if p >= 0:
                    self.book.serving(peer, {model}, now)
                if self.rng.random() >= chance:
                    continue
                share = rate / len(publishers) * self.rng.uniform(0.8, 1.2)
                capacity = self.speed[p] * 60 / MAX_TOKENS if p >= 0 else 0.0
                self.book.add(
                    DemandRecord(
                        peer,
                        model,
                        min(share, capacity),
                        max(0.0, share - capacity),
                        now,
                        weight=weight,
                        from_server=p >= 0,
                    )
                )
        self.book.expire(now)
        on_last = sum(1 for i in self.auto if self.serving[i] == MODELS[-1])
        self.results.supply_series.append((now, on_last))

    def _decide(self, i: int) -> None:
        self.net.at(self.net.now + DECIDE_EVERY_S, self._decide, i)
        if self.auto_since.get(i, 0.0) > self.net.now:
            return  # still pulling
        choice = choose_model(
            self.book, self.net.now, me=self.net.ids[i], current=self.serving[i],
            serving_since=self.auto_since[i], candidates=MODELS, rng=self.rng,
        )  # fmt: skip
        if choice.model == self.serving[i]:
            return
        self.serving[i] = None
        ready = self.net.now + (self.s.pull_s if choice.model else 0.0)
        self.auto_since[i] = ready
        if choice.model is not None:
            self.net.at(ready, self._start_serving, i, choice.model)

    def _start_serving(self, i: int, model: ModelHash) -> None:
        self.serving[i] = model
        self.book.serving(self.net.ids[i], {model}, self.net.now)
        self.net.provide(i, record_key(model))

    # --- the run ---

    def run(self) -> dict[str, float | int | None]:
        wall = time.monotonic()
        self.build()
        built = time.monotonic() - wall
        self.net.run_until(self.s.seconds)
        return self._summary(built, time.monotonic() - wall)

    def _summary(self, built_s: float, wall_s: float) -> dict[str, float | int | None]:
        r, t = self.results, self.s.seconds
        traffic = self.net.traffic
        tables = [len(tb) for tb in self.net.tables if tb is not None]

        def per(category: str, nodes: int) -> tuple[float, float]:
            return traffic.messages[category] / nodes / t, traffic.bytes[category] / nodes / t

        refresh_msgs, refresh_bytes = per("dht-refresh", max(1, len(self.refresh_nodes)))
        # Pings guarding full buckets, joins and announcements happen across the network.
        evict_msgs, evict_bytes = per("dht", self.s.n)
        join_msgs, join_bytes = per("dht-join", self.s.n)
        evict_msgs, evict_bytes = evict_msgs + join_msgs, evict_bytes + join_bytes
        swim_msgs, swim_bytes = per("swim", max(1, len(self.swims)))
        demand_msgs, demand_bytes = self._demand_gossip()
        return {
            "n": self.s.n,
            "seconds": t,
            "lookups": len(r.lookup_ms),
            "lookup_success": _share(r.lookup_ok),
            "nearest_found": _share(r.nearest_ok),
            "hops_p50": _pct(r.lookup_hops, 50),
            "hops_p95": _pct(r.lookup_hops, 95),
            "lookup_ms_p50": _pct(r.lookup_ms, 50),
            "lookup_ms_p95": _pct(r.lookup_ms, 95),
            "findable_s_median": statistics.median(r.findable_s) if r.findable_s else None,
            "findable_s_max": max(r.findable_s) if r.findable_s else None,
            "findable_trials": len(r.findable_s),
            "supply_follow_s": self._supply_follow(),
            "auto_on_shifted_model_end": r.supply_series[-1][1] if r.supply_series else 0,
            "dht_msgs_per_node_s": refresh_msgs + evict_msgs,
            "dht_bytes_per_node_s": refresh_bytes + evict_bytes,
            "swim_msgs_per_client_s": swim_msgs,
            "swim_bytes_per_client_s": swim_bytes,
            "demand_msgs_per_node_s": demand_msgs,
            "demand_bytes_per_node_s": demand_bytes,
            "bg_bytes_per_node_s": refresh_bytes + evict_bytes + swim_bytes + demand_bytes,
            "requests": r.requests,
            "request_success": r.answered / r.requests if r.requests else None,
            "failovers": r.failovers,
            "table_size_mean": statistics.mean(tables) if tables else 0,
            "departed": sum(1 for up in self.net.alive if not up),
            "joined": len(self.net.alive) - self.s.n,
            "build_s": round(built_s, 1),
            "wall_s": round(wall_s, 1),
        }

    def _demand_gossip(self) -> tuple[float, float]:
        """Demand records per node per second on the model topics (module doc)."""
        live = sum(self.net.alive)
        total = 0.0
        for model in MODELS:
            servers = sum(1 for i, m in enumerate(self.serving) if m == model and self.net.alive[i])
            subscribers = servers + self.s.clients * POPULARITY[MODELS.index(model)]
            publishing = servers * publish_probability(servers, DEMAND_PUBLISHERS) if servers else 0.0
            total += publishing / DEMAND_EVERY_S * subscribers * GOSSIP_COPIES
        return total / live, total / live * DEMAND_RECORD_BYTES

    def _supply_follow(self) -> float | None:
        series = [(t, c) for t, c in self.results.supply_series if t >= self.demand_shift_at]
        if not series or series[-1][1] <= series[0][1]:
            return None  # supply did not grow
        target = series[0][1] + 0.8 * (series[-1][1] - series[0][1])
        return next((t - self.demand_shift_at for t, c in series if c >= target), None)


def _pct(values: list[float] | list[int], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))])


def _share(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


COLUMNS = (
    ("n", "N", "{:.0f}"),
    ("hops_p50", "hops p50", "{:.0f}"),
    ("hops_p95", "p95", "{:.0f}"),
    ("lookup_ms_p50", "lookup ms p50", "{:.0f}"),
    ("lookup_ms_p95", "p95", "{:.0f}"),
    ("lookup_success", "ok", "{:.1%}"),
    ("nearest_found", "nearest", "{:.1%}"),
    ("findable_s_median", "findable s", "{:.1f}"),
    ("supply_follow_s", "supply s", "{:.0f}"),
    ("dht_bytes_per_node_s", "DHT B/s", "{:.0f}"),
    ("swim_bytes_per_client_s", "SWIM B/s", "{:.0f}"),
    ("demand_bytes_per_node_s", "demand B/s", "{:.0f}"),
    ("request_success", "answered", "{:.2%}"),
    ("table_size_mean", "table", "{:.0f}"),
    ("wall_s", "wall s", "{:.0f}"),
)
GROWTH = ("hops_p50", "lookup_ms_p50", "lookup_ms_p95", "findable_s_median", "dht_bytes_per_node_s",
          "swim_bytes_per_client_s", "demand_bytes_per_node_s", "table_size_mean")  # fmt: skip


def print_table(rows: list[dict[str, float | int | None]]) -> None:
    def cell(value: float | int | None, fmt: str) -> str:
        return "-" if value is None else fmt.format(value)

    widths = [max(len(title), 9) for _, title, _ in COLUMNS]
    print("  ".join(title.rjust(w) for (_, title, _), w in zip(COLUMNS, widths, strict=True)))
    for row in rows:
        print("  ".join(cell(row[k], f).rjust(w) for (k, _, f), w in zip(COLUMNS, widths, strict=True)))
    base = rows[0]
    print(f"\ngrowth vs N={base['n']}:")
    for row in rows[1:]:
        ratios = {k: _ratio(row[k], base[k]) for k in GROWTH}
        print(f"  N={row['n']}: " + ", ".join(f"{k} x{v:.2f}" for k, v in ratios.items() if v is not None))


def _ratio(a: float | int | None, b: float | int | None) -> float | None:
    return a / b if a is not None and b else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,5000,30000", help="network sizes, comma separated")
    parser.add_argument("--seconds", type=float, default=1800.0, help="virtual seconds per run")
    parser.add_argument("--lookups", type=int, default=1000)
    parser.add_argument("--refresh-sample", type=int, default=200)
    parser.add_argument("--clients", type=int, default=CLIENTS)
    parser.add_argument("--failover-s", type=float, default=5.0)
    parser.add_argument("--pull-s", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="small sizes and a short run (for the test)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    seconds, lookups, clients, sample = args.seconds, args.lookups, args.clients, args.refresh_sample
    if args.quick:
        sizes, seconds, lookups, clients, sample = [200, 400], 1800.0, 100, 20, 20
    rows = []
    for n in sizes:
        settings = Settings(
            n=n, seconds=seconds, seed=args.seed, lookups=lookups, refresh_sample=sample, clients=clients,
            failover_s=args.failover_s, pull_s=args.pull_s,
        )  # fmt: skip
        rows.append(Simulation(settings).run())
        print(f"N={n} done in {rows[-1]['wall_s']} s", file=sys.stderr, flush=True)
    print_table(rows)
    print(json.dumps({"simulate": rows, "growth": {
        str(row["n"]): {k: _ratio(row[k], rows[0][k]) for k in GROWTH} for row in rows[1:]
    }}))  # fmt: skip


if __name__ == "__main__":
    main()
