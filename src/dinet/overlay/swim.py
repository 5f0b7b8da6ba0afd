"""SWIM-style liveness for the peers a node is using: the sans-IO core.

A node tracks a bounded set of members (the peers it serves or uses), never the whole
network, and spends the same few messages each protocol period however many it tracks.

    swim = Swim(me, rng=random.Random(), incarnation=start_time_s)
    swim.track(peer, now) / swim.untrack(peer)
    actions = swim.tick(now)                  # Ping, PingReq, Suspected, Died, Revived
    swim.on_ack(now, probe_id, peer, news, incarnation)      # a direct ack arrived
    swim.on_indirect_ack(now, probe_id, via, news)           # `via` reached the target for us
    news = swim.on_ping(now, peer, news, incarnation)        # answer a ping: news for the ack
    news = swim.on_ping_req(now, peer, target, news)         # news for the ping we forward
    news = swim.on_forwarded_ack(now, target, news, incarnation)  # news for the relayed ack
    swim.next_tick_at()                       # when tick() next has something to do

Each period probes one member (round-robin over a list shuffled every round) with a
direct `Ping`. With no ack after `ack_timeout_s`, `indirect_k` other members are asked to
ping it (`PingReq`). Still no ack when the period ends: the member is suspect. A suspect
that answers nothing for `suspicion_periods` periods is dead (`Died`) and is no longer
probed; any later message from it revives it (`Revived`).

News (alive/suspect/dead with an incarnation) rides on pings and acks, at most
`MAX_NEWS_PER_MESSAGE` items each, every item ~λ·log2(n+1) times. A member that hears it
is suspected raises its incarnation and spreads "alive". Others' news is unsigned, so
"suspect" or "dead" about a member we track never changes its state: it only makes that
member an out-of-turn probe target, and our own probe decides. Out-of-turn probes are at
most one per period, beside the round-robin one, so neither a rumour nor a liar can make
a node probe more (or starve the round-robin).

Only a message that comes from the member itself (the transport authenticates it) proves
it alive; a relayed ack counts for the probe it answers and nothing else.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import OrderedDict
from dataclasses import KW_ONLY, dataclass, field
from typing import Literal

NewsState = Literal["alive", "suspect", "dead"]
MemberState = Literal["alive", "suspect", "dead"]

MAX_NEWS_PER_MESSAGE = 6
MAX_RUMOURS = 1024  # news kept about peers; the oldest goes first
_SEVERITY = {"alive": 0, "suspect": 1, "dead": 2}


@dataclass(frozen=True)
class News:
    """What someone says about a peer; a higher incarnation wins, then the graver state."""

    peer_id: str
    state: NewsState
    incarnation: int

    def overrides(self, other: News | None) -> bool:
        if other is None:
            return True
        if self.incarnation != other.incarnation:
            return self.incarnation > other.incarnation
        return _SEVERITY[self.state] > _SEVERITY[other.state]


@dataclass(frozen=True)
class Ping:
    target: str
    probe_id: int
    news: tuple[News, ...]


@dataclass(frozen=True)
class PingReq:
    """Ask `via` to ping `target` for us and relay its ack."""

    via: str
    target: str
    probe_id: int
    news: tuple[News, ...]


@dataclass(frozen=True)
class Suspected:
    peer: str


@dataclass(frozen=True)
class Died:
    peer: str


@dataclass(frozen=True)
class Revived:
    peer: str


Action = Ping | PingReq | Suspected | Died | Revived


@dataclass
class _Member:
    state: MemberState = "alive"
    incarnation: int = 0  # the highest it told us itself
    suspected_in: int = 0  # the period its suspicion began


@dataclass
class _Probe:
    target: str
    sent_at: float
    asked_others: bool = False
    vias: tuple[str, ...] = ()  # those we asked to ping the target for us


@dataclass
class _Spreading:
    sends_left: int
    sent: int = 0


@dataclass
class Swim:
    """The members one node watches, and what it has heard about peers (see the module's doc)."""

    me: str
    _: KW_ONLY
    rng: random.Random
    period_s: float = 2.0
    ack_timeout_s: float = 0.8
    indirect_k: int = 3
    suspicion_periods: int = 3
    retransmit_mult: float = 3.0  # λ: each item of news is sent ~λ·log2(n+1) times
    incarnation: int = 0  # ours; seed it with the start time so a restart outranks old news
    _members: dict[str, _Member] = field(default_factory=dict, init=False)
    _order: list[str] = field(default_factory=list, init=False)  # this round's probe order
    _next: int = field(default=0, init=False)
    _urgent: OrderedDict[str, None] = field(default_factory=OrderedDict, init=False)  # out-of-turn targets
    _probes: dict[int, _Probe] = field(default_factory=dict, init=False)  # this period's
    _probe_ids: int = field(default=0, init=False)
    _period: int = field(default=0, init=False)
    _period_start: float | None = field(default=None, init=False)
    # The latest news about each peer, and those items still being passed on.
    _rumours: OrderedDict[str, News] = field(default_factory=OrderedDict, init=False)
    _spreading: dict[str, _Spreading] = field(default_factory=dict, init=False)
    _events: list[Action] = field(default_factory=list, init=False)

    # --- the members ---

    def track(self, peer: str, now: float) -> None:
        """Watch `peer`: it starts alive and joins the round at a random place (a dead member
        tracked again is watched afresh)."""
        if peer == self.me:
            return
        member = self._members.get(peer)
        if member is not None and member.state != "dead":
            return
        self._members[peer] = _Member(incarnation=member.incarnation if member else 0)
        self._order.insert(self.rng.randint(self._next, len(self._order)), peer)
        if self._period_start is None:
            self._period_start = now

    def untrack(self, peer: str) -> None:
        self._members.pop(peer, None)
        self._urgent.pop(peer, None)
        self._probes = {pid: p for pid, p in self._probes.items() if p.target != peer}

    def state_of(self, peer: str) -> MemberState | None:
        member = self._members.get(peer)
        return member.state if member else None

    def members(self) -> dict[str, MemberState]:
        return {peer: m.state for peer, m in self._members.items()}

    def heard(self, peer: str) -> News | None:
        """The latest news about `peer` (hearsay: never proof)."""
        return self._rumours.get(peer)

    # --- time ---

    def next_tick_at(self) -> float | None:
        """When `tick` next has work (None: nothing is tracked yet; a past time: now)."""
        if self._period_start is None:
            return None
        if self._events:
            return self._period_start  # a death or revival to report
        at = self._period_start + self.period_s
        for probe in self._probes.values():
            if not probe.asked_others:
                at = min(at, probe.sent_at + self.ack_timeout_s)
        return at

    def tick(self, now: float) -> list[Action]:
        actions: list[Action] = []
        if self._period_start is not None:
            for probe_id, probe in self._probes.items():
                if not probe.asked_others and now >= probe.sent_at + self.ack_timeout_s:
                    probe.asked_others = True
                    actions += self._ask_others(probe_id, probe)
            if now >= self._period_start + self.period_s:
                self._end_period()
                self._period_start = now  # a late tick starts the next period late, not several at once
                self._period += 1
                actions += self._start_period(now)
        events, self._events = self._events, []
        return events + actions

    def _start_period(self, now: float) -> list[Action]:
        targets = [t for t in (self._next_in_turn(), self._next_urgent()) if t is not None]
        if len(targets) == 2 and targets[0] == targets[1]:
            targets.pop()
        actions: list[Action] = []
        for target in targets:
            self._probe_ids += 1
            self._probes[self._probe_ids] = _Probe(target, now)
            actions.append(Ping(target, self._probe_ids, self._news_for(target)))
        return actions

    def _end_period(self) -> None:
        for probe in self._probes.values():
            member = self._members.get(probe.target)
            if member is not None and member.state == "alive":
                member.state, member.suspected_in = "suspect", self._period
                self._events.append(Suspected(probe.target))
                self._spread(News(probe.target, "suspect", member.incarnation))
                self._urgent[probe.target] = None  # one more try of our own before it dies
        self._probes.clear()
        for peer, member in self._members.items():
            if member.state == "suspect" and self._period - member.suspected_in >= self.suspicion_periods:
                member.state = "dead"
                self._events.append(Died(peer))
                self._spread(News(peer, "dead", member.incarnation))

    def _next_in_turn(self) -> str | None:
        for _ in range(2):  # the rest of this round, then a fresh round
            while self._next < len(self._order):
                peer = self._order[self._next]
                self._next += 1
                member = self._members.get(peer)
                if member is not None and member.state != "dead":
                    return peer
            self._order = [p for p, m in self._members.items() if m.state != "dead"]
            self.rng.shuffle(self._order)
            self._next = 0
        return None

    def _next_urgent(self) -> str | None:
        while self._urgent:
            peer, _ = self._urgent.popitem(last=False)
            if peer in self._members:
                return peer
        return None

    def _ask_others(self, probe_id: int, probe: _Probe) -> list[Action]:
        helpers = [p for p, m in self._members.items() if m.state == "alive" and p != probe.target]
        probe.vias = tuple(self.rng.sample(helpers, min(self.indirect_k, len(helpers))))
        return [PingReq(via, probe.target, probe_id, self._news_for(via)) for via in probe.vias]

    # --- messages ---

    def on_ack(
        self, now: float, probe_id: int, from_peer: str, news: tuple[News, ...], incarnation: int = 0
    ) -> None:
        """`from_peer` answered a ping of ours (late answers count as signs of life too)."""
        probe = self._probes.get(probe_id)
        if probe is not None and probe.target == from_peer:
            del self._probes[probe_id]
        self._proven_alive(from_peer, incarnation)
        self._absorb(news, from_peer)

    def on_indirect_ack(self, now: float, probe_id: int, via: str, news: tuple[News, ...]) -> None:
        """`via` says the target of our probe answered it: that probe succeeded.

        The one piece of hearsay that counts: we chose `via` among our members to ask."""
        probe = self._probes.get(probe_id)
        if probe is not None and via in probe.vias:
            del self._probes[probe_id]
            self._proven_alive(probe.target, None)
        self._absorb(news, via)

    def on_ping(
        self, now: float, from_peer: str, news: tuple[News, ...], incarnation: int = 0
    ) -> tuple[News, ...]:
        """A ping from `from_peer`: the news to put on our ack."""
        self._proven_alive(from_peer, incarnation)
        self._absorb(news, from_peer)
        return self._news_for(from_peer)

    def on_ping_req(
        self, now: float, from_peer: str, target: str, news: tuple[News, ...]
    ) -> tuple[News, ...]:
        """`from_peer` asks us to ping `target`: the news to put on that ping."""
        self._proven_alive(from_peer, None)
        self._absorb(news, from_peer)
        return self._news_for(target)

    def on_forwarded_ack(
        self, now: float, target: str, news: tuple[News, ...], incarnation: int = 0
    ) -> tuple[News, ...]:
        """`target` answered the ping we sent for someone else: the news to relay with its ack."""
        self._proven_alive(target, incarnation)
        self._absorb(news, target)
        return self.news_to_send()

    def _proven_alive(self, peer: str, incarnation: int | None) -> None:
        """A message from `peer` itself: it is alive."""
        member = self._members.get(peer)
        if member is None:
            return
        if incarnation is not None:
            member.incarnation = max(member.incarnation, incarnation)
        if member.state == "dead":
            self._events.append(Revived(peer))
        if member.state != "alive":
            member.state = "alive"
            self._spread(News(peer, "alive", member.incarnation))

    def _absorb(self, news: tuple[News, ...], from_peer: str) -> None:
        for item in news[:MAX_NEWS_PER_MESSAGE]:
            if item.peer_id == self.me:
                if item.state != "alive" and item.incarnation >= self.incarnation:
                    self.incarnation = item.incarnation + 1  # refute: we are here
                    self._spread(News(self.me, "alive", self.incarnation))
                continue
            if not self._spread(item):
                continue  # old news
            member = self._members.get(item.peer_id)
            if member is None or item.peer_id == from_peer:
                continue
            claims_gone = item.state != "alive" and member.state == "alive"
            claims_back = (
                item.state == "alive" and member.state != "alive" and item.incarnation > member.incarnation
            )
            if claims_gone or claims_back:
                self._urgent[item.peer_id] = None  # hearsay: our own probe decides

    # --- news ---

    def _spread(self, item: News) -> bool:
        """Keep `item` and pass it on, unless what we have overrides it; whether it was new."""
        if not item.overrides(self._rumours.get(item.peer_id)):
            return False
        self._rumours.pop(item.peer_id, None)
        self._rumours[item.peer_id] = item
        self._spreading.pop(item.peer_id, None)
        self._spreading[item.peer_id] = _Spreading(self._sends())
        while len(self._rumours) > MAX_RUMOURS:
            forgotten, _ = self._rumours.popitem(last=False)
            self._spreading.pop(forgotten, None)
        return True

    def _sends(self) -> int:
        return max(1, math.ceil(self.retransmit_mult * math.log2(len(self._members) + 1)))

    def _news_for(self, peer: str) -> tuple[News, ...]:
        """News to send to `peer`: what we say about it first (so a suspect hears it), then the freshest."""
        about = self._rumours.get(peer)
        first = (about,) if about is not None and about.state != "alive" else ()
        return first + self.news_to_send(MAX_NEWS_PER_MESSAGE - len(first), skip=peer if first else None)

    def news_to_send(self, limit: int = MAX_NEWS_PER_MESSAGE, skip: str | None = None) -> tuple[News, ...]:
        """Up to `limit` items still being spread, the least sent first; each send counts."""
        candidates = (
            (s.sent, i, peer) for i, (peer, s) in enumerate(self._spreading.items()) if peer != skip
        )
        chosen = [peer for _, _, peer in heapq.nsmallest(limit, candidates)]
        for peer in chosen:
            spreading = self._spreading[peer]
            spreading.sent += 1
            spreading.sends_left -= 1
            if spreading.sends_left <= 0:
                del self._spreading[peer]
        return tuple(self._rumours[peer] for peer in chosen)
