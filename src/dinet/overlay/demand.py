"""Supply follows demand, sans-IO: a book of demand and supply, and which model to serve.

Every node publishes, per model it sees asked for, a `DemandRecord`: the requests per
minute it saw for the model and the busy refusals per minute among them (a client that
asks, is refused and asks elsewhere is seen twice: refusals are demand nobody met).
Supply is the set of nodes serving each model, from their manifests. A node started
with `--serve auto` keeps a `DemandBook` of both and asks `choose_model` every minute or
so which model to serve:

    book = DemandBook()
    book.add(DemandRecord(publisher, model, requests_per_min=12, busy_per_min=3, at=now))
    book.serving(peer, {model}, now)                # from a manifest
    choice = choose_model(book, now, me=me, current=model_or_None, serving_since=t,
                          candidates=models_that_fit_my_budget, rng=rng)
    choice.model                                    # serve this (None: serve nothing)

The rule. A model's load is its demand per server counting this node among them
(`demand / (other servers + 1)`). An idle node joins the candidate with the highest load
(given an `rng`: one drawn in proportion to its shortfall of servers, so that idle nodes
deciding at once do not all pick the same).
A serving node moves to another candidate only when (1) it has served its model at least
`min_dwell_s`, (2) the other's load beats its own by more than the `margin` (hysteresis),
and (3) it is not its model's last server while demand for it remains. Many nodes see
the same book and would all move at once, so a node that qualifies moves with the
probability that one of its model's servers must: the model's surplus of servers over
its fair share (servers in proportion to demand) divided by its servers. A node stops
(model None) when nobody has asked for its model for `idle_after_s`, unless another
candidate has demand. Records count for `record_ttl_s`; one record per publisher and
model, the newest wins. Supply entries (manifests) expire after `record_ttl_s` too.

Sampled publication. If every server of a model published every period, the model's
topic would carry traffic in proportion to its servers. A server publishes instead with
probability `publish_probability(servers, target)` (about `target` records a period
whatever the number of servers), and a record carries a `weight`, the inverse of the
chance that its publisher has a record live in a book (`record_weight`): summed over the
live records, weighted rates estimate the whole model's demand, and the weights of
servers' records (`from_server`) estimate its number of servers, which no node knows
directly at scale (`DemandBook.server_count`).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

from dinet.wire.ids import ModelHash, PeerId

RECORD_TTL_S = 180.0  # records are republished every minute: three may be missed
MIN_DWELL_S = 600.0  # a pull costs minutes; serving less than this wastes it
IDLE_AFTER_S = 600.0
MARGIN = 0.5  # another model must be 50% busier per server to be worth a move


@dataclass(frozen=True)
class DemandRecord:
    """What `publisher` saw for `model` in the minute before `at`."""

    publisher: PeerId
    model: ModelHash
    requests_per_min: float
    busy_per_min: float
    at: float
    weight: float = 1.0  # how many publishers this record stands for (`record_weight`)
    from_server: bool = False  # published by a server of `model`: it counts as supply too

    @property
    def load(self) -> float:
        """Requests and refusals per minute this record stands for (weighted)."""
        return self.weight * (max(0.0, self.requests_per_min) + max(0.0, self.busy_per_min))


def publish_probability(servers: float, target: float) -> float:
    """The chance a server publishes its record this period, so that about `target` of a
    model's `servers` do (all of them while they are fewer)."""
    return 1.0 if servers <= target else target / servers


def record_weight(probability: float, periods_live: float) -> float:
    """The weight of a record published with `probability` per period and counted for
    `periods_live` periods: the inverse of the chance that its publisher has at least one
    record live in a book (the newest replaces the older ones), so weighted sums over the
    live records estimate sums over all publishers."""
    p = min(1.0, max(probability, 1e-9))
    return 1.0 / (1.0 - (1.0 - p) ** max(periods_live, 1.0))


@dataclass(frozen=True)
class Policy:
    """The knobs of `choose_model` (module docstring)."""

    margin: float = MARGIN
    min_dwell_s: float = MIN_DWELL_S
    idle_after_s: float = IDLE_AFTER_S


@dataclass(frozen=True)
class Choice:
    """The model to serve (None: none) and why, for the log."""

    model: ModelHash | None
    reason: str


class DemandBook:
    """Demand records and supply by model, each counted for `record_ttl_s`."""

    def __init__(self, record_ttl_s: float = RECORD_TTL_S) -> None:
        self.record_ttl_s = record_ttl_s
        self._records: dict[ModelHash, dict[PeerId, DemandRecord]] = {}
        self._last_demand: dict[ModelHash, float] = {}
        self._supply: dict[PeerId, frozenset[ModelHash]] = {}
        self._servers: dict[ModelHash, dict[PeerId, float]] = {}  # by model: when each said so

    def add(self, record: DemandRecord) -> bool:
        """Keep `record` unless the book holds a newer one from its publisher for its model."""
        by_publisher = self._records.setdefault(record.model, {})
        held = by_publisher.get(record.publisher)
        if held is not None and held.at >= record.at:
            return False
        by_publisher[record.publisher] = record
        if record.load > 0:
            self._last_demand[record.model] = max(record.at, self._last_demand.get(record.model, record.at))
        return True

    def serving(self, peer: PeerId, models: Iterable[ModelHash], now: float) -> None:
        """`peer`'s manifest says it serves `models` (replacing what it said before)."""
        for model in self._supply.pop(peer, frozenset()):
            self._servers.get(model, {}).pop(peer, None)
        self._supply[peer] = frozenset(models)
        for model in self._supply[peer]:
            self._servers.setdefault(model, {})[peer] = now

    def demand(self, model: ModelHash, now: float) -> float:
        """Requests and refusals per minute for `model`, summed over live records."""
        horizon = now - self.record_ttl_s
        return sum(r.load for r in self._records.get(model, {}).values() if r.at > horizon)

    def servers(self, model: ModelHash, now: float) -> set[PeerId]:
        """The servers of `model` known by name (manifests)."""
        horizon = now - self.record_ttl_s
        return {peer for peer, at in self._servers.get(model, {}).items() if at > horizon}

    def server_count(self, model: ModelHash, now: float, *, besides: PeerId | None = None) -> float:
        """How many nodes serve `model` (other than `besides`): those known by name, or the
        weighted count of servers' live records if that is more (sampled publication)."""
        horizon = now - self.record_ttl_s
        sampled = sum(
            r.weight
            for r in self._records.get(model, {}).values()
            if r.from_server and r.at > horizon and r.publisher != besides
        )
        named = self.servers(model, now) - ({besides} if besides is not None else set())
        return max(float(len(named)), sampled)

    def last_demand(self, model: ModelHash) -> float | None:
        """When a record last showed demand for `model` (None: never)."""
        return self._last_demand.get(model)

    def models(self, now: float) -> set[ModelHash]:
        """Every model with live demand or supply."""
        horizon = now - self.record_ttl_s
        asked = {m for m, records in self._records.items() if any(r.at > horizon for r in records.values())}
        served = {m for m, peers in self._servers.items() if any(at > horizon for at in peers.values())}
        return asked | served

    def expire(self, now: float) -> None:
        """Drop what no longer counts (the book would otherwise grow with history)."""
        horizon = now - self.record_ttl_s
        for model in list(self._records):
            live = {p: r for p, r in self._records[model].items() if r.at > horizon}
            if live:
                self._records[model] = live
            else:
                del self._records[model]
        for model in list(self._servers):
            for peer in [p for p, at in self._servers[model].items() if at <= horizon]:
                del self._servers[model][peer]
                self._supply[peer] = self._supply[peer] - {model}
            if not self._servers[model]:
                del self._servers[model]
        self._supply = {p: models for p, models in self._supply.items() if models}


def choose_model(
    book: DemandBook,
    now: float,
    *,
    me: PeerId,
    current: ModelHash | None,
    serving_since: float,
    candidates: Iterable[ModelHash],
    rng: random.Random | None = None,
    policy: Policy = Policy(),
) -> Choice:
    """Which model this node should serve now (module docstring). Without `rng` a node
    that qualifies to move always moves (deterministic, for tests of one node)."""
    fits = sorted(set(candidates))
    demand = {m: book.demand(m, now) for m in set(fits) | ({current} if current else set())}
    others = {m: book.server_count(m, now, besides=me) for m in demand}

    def load(model: ModelHash) -> float:
        return demand[model] / (others[model] + 1)

    wanted = [m for m in fits if m != current and demand[m] > 0]
    best = max(wanted, key=lambda m: (load(m), m), default=None)
    if current is None:
        if best is None:
            return Choice(None, "no demand for any model that fits")
        if rng is not None:
            best = _spread(book, now, wanted, demand, rng) or best
        return Choice(best, f"idle; {best} has {load(best):.1f}/min per server")
    if current not in fits:
        return Choice(best, f"{current} no longer fits the budget")
    last = book.last_demand(current)
    if demand[current] <= 0 and now - (last if last is not None else serving_since) >= policy.idle_after_s:
        if best is None:
            return Choice(None, f"no demand for {current} for {policy.idle_after_s:.0f}s")
        return Choice(best, f"no demand for {current}; {best} has {load(best):.1f}/min per server")
    if now - serving_since < policy.min_dwell_s:
        return Choice(current, "dwell time not reached")
    if others[current] == 0 and demand[current] > 0:
        return Choice(current, "last server of a model in demand")
    if best is None or load(best) <= load(current) * (1.0 + policy.margin):
        return Choice(current, "no model busier by the margin")
    if rng is not None and rng.random() >= _leave_probability(book, now, current, demand[current]):
        return Choice(current, "another server of this model moves instead")
    return Choice(best, f"{best} has {load(best):.1f}/min per server, {current} {load(current):.1f}")


def _spread(
    book: DemandBook, now: float, wanted: list[ModelHash], demand: dict[ModelHash, float], rng: random.Random
) -> ModelHash | None:
    """For an idle node: a model drawn in proportion to its shortfall of servers against
    its fair share, so that idle nodes deciding at once spread out (None: none falls short)."""
    models = book.models(now) | set(wanted)
    total_demand = sum(book.demand(m, now) for m in models)
    total_servers = _total_servers(book, now, models) + 1
    shortfall = [total_servers * demand[m] / total_demand - book.server_count(m, now) for m in wanted]
    if total_demand <= 0 or max(shortfall) <= 0:
        return None
    return rng.choices(wanted, weights=[max(0.0, s) for s in shortfall])[0]


def _leave_probability(book: DemandBook, now: float, current: ModelHash, current_demand: float) -> float:
    """The share of `current`'s servers that must leave for it to hold its fair share
    (at least one of them, so a move that qualifies happens somewhere)."""
    models = book.models(now)
    total_demand = sum(book.demand(m, now) for m in models)
    total_servers = _total_servers(book, now, models)
    servers = max(1.0, book.server_count(current, now))
    fair = total_servers * current_demand / total_demand if total_demand > 0 else 0.0
    return min(1.0, max(servers - fair, 1.0) / servers)


def _total_servers(book: DemandBook, now: float, models: set[ModelHash]) -> float:
    """Nodes serving any of `models`: by name, or by the weighted records if more."""
    named = len({p for m in models for p in book.servers(m, now)})
    return max(float(named), sum(book.server_count(m, now) for m in models))
