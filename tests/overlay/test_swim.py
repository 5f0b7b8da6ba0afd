"""The SWIM core, driven by a fake clock and a scripted in-memory network (no I/O)."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from dinet.overlay.swim import (
    MAX_NEWS_PER_MESSAGE,
    Action,
    Died,
    News,
    Ping,
    PingReq,
    Revived,
    Suspected,
    Swim,
)

PERIOD = 1.0
STEP = 0.1


@dataclass
class ScriptedNet:
    """A fake network (named so: these tests are about the core): messages arrive at once
    unless their sender or receiver is down or the link between them is cut."""

    cores: dict[str, Swim]
    down: set[str] = field(default_factory=set)
    cut: set[frozenset[str]] = field(default_factory=set)
    events: dict[str, list[Action]] = field(default_factory=dict)
    pings: Counter[str] = field(default_factory=Counter)  # pings and ping_reqs sent, per core
    news_items: list[int] = field(default_factory=list)  # items of news per message
    now: float = 0.0

    @classmethod
    def of(cls, names: list[str], seed: int = 1, suspicion_periods: int = 3) -> ScriptedNet:
        rng = random.Random(seed)
        return cls(
            {
                n: Swim(
                    n,
                    rng=random.Random(rng.random()),
                    period_s=PERIOD,
                    ack_timeout_s=0.3,
                    suspicion_periods=suspicion_periods,
                )
                for n in names
            }
        )

    def link(self, a: str, b: str) -> bool:
        return a not in self.down and b not in self.down and frozenset((a, b)) not in self.cut

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now = round(self.now + STEP, 6)
            for name, core in self.cores.items():
                if name not in self.down:
                    for action in core.tick(self.now):
                        self._carry(name, action)

    def run_until(self, done: Callable[[], bool], max_seconds: float) -> bool:
        end = self.now + max_seconds
        while self.now < end:
            if done():
                return True
            self.run(STEP)
        return done()

    def _carry(self, me: str, action: Action) -> None:
        core = self.cores[me]
        if isinstance(action, Ping):
            self._count(me, action.news)
            if self.link(me, action.target):
                target = self.cores[action.target]
                answer = target.on_ping(self.now, me, action.news, core.incarnation)
                self._count(action.target, answer, ping=False)
                if self.link(action.target, me):
                    core.on_ack(self.now, action.probe_id, action.target, answer, target.incarnation)
        elif isinstance(action, PingReq):
            self._count(me, action.news)
            if not self.link(me, action.via):
                return
            via = self.cores[action.via]
            forwarded = via.on_ping_req(self.now, me, action.target, action.news)
            self._count(action.via, forwarded)
            if not self.link(action.via, action.target):
                return
            target = self.cores[action.target]
            answer = target.on_ping(self.now, action.via, forwarded, via.incarnation)
            relayed = via.on_forwarded_ack(self.now, action.target, answer, target.incarnation)
            if self.link(action.via, me):
                core.on_indirect_ack(self.now, action.probe_id, action.via, relayed)
        else:
            self.events.setdefault(me, []).append(action)

    def _count(self, sender: str, news: tuple[News, ...], ping: bool = True) -> None:
        if ping:
            self.pings[sender] += 1
        self.news_items.append(len(news))

    def died(self, me: str, peer: str) -> bool:
        return Died(peer) in self.events.get(me, [])


def _watching(net: ScriptedNet, watcher: str, peers: list[str]) -> None:
    for peer in peers:
        net.cores[watcher].track(peer, net.now)


def test_a_dead_member_is_declared_dead_within_a_bounded_number_of_periods() -> None:
    names = [f"p{i}" for i in range(8)]
    net = ScriptedNet.of(names)
    _watching(net, "p0", names[1:])
    net.run(5 * PERIOD)
    net.down.add("p5")
    suspicion = net.cores["p0"].suspicion_periods
    # Worst case: first in the round just gone and last in the next (2n - 1 periods),
    # then the suspicion runs its course.
    bound = (2 * 7 + suspicion + 2) * PERIOD
    assert net.run_until(lambda: net.died("p0", "p5"), bound)
    assert net.cores["p0"].state_of("p5") == "dead"
    assert [e for e in net.events["p0"] if isinstance(e, Died)] == [Died("p5")]


def test_a_dead_member_is_no_longer_probed() -> None:
    net = ScriptedNet.of(["a", "b", "c"])
    _watching(net, "a", ["b", "c"])
    net.down.add("c")
    assert net.run_until(lambda: net.died("a", "c"), 30 * PERIOD)
    net.pings.clear()
    net.run(10 * PERIOD)
    assert net.pings["a"] == 10  # b only, one a period: nothing spent on c


def test_no_false_death_when_the_direct_path_fails_but_an_indirect_one_works() -> None:
    names = ["a", "x", "y", "z", "w"]
    net = ScriptedNet.of(names)
    _watching(net, "a", ["x", "y", "z", "w"])
    net.cut.add(frozenset(("a", "x")))  # a cannot reach x; y, z and w can
    net.run(60 * PERIOD)
    assert net.cores["a"].state_of("x") == "alive"
    assert not any(isinstance(e, Suspected | Died) for e in net.events.get("a", []))


def test_a_suspect_that_answers_again_refutes_the_suspicion() -> None:
    names = ["a", "x", "y", "z"]
    net = ScriptedNet.of(names, suspicion_periods=5)
    _watching(net, "a", ["x", "y", "z"])
    _watching(net, "x", ["a"])
    before = net.cores["x"].incarnation
    net.cut |= {frozenset(("x", o)) for o in ("a", "y", "z")}  # x cut off from everyone
    assert net.run_until(lambda: Suspected("x") in net.events.get("a", []), 30 * PERIOD)
    net.cut.clear()
    net.run(20 * PERIOD)
    assert not net.died("a", "x")
    assert net.cores["a"].state_of("x") == "alive"
    assert net.cores["x"].incarnation > before  # it heard it was suspected and said it lives


def test_a_member_that_comes_back_after_its_death_is_revived() -> None:
    net = ScriptedNet.of(["a", "b", "c"])
    _watching(net, "a", ["b", "c"])
    _watching(net, "c", ["a"])
    net.down.add("c")
    assert net.run_until(lambda: net.died("a", "c"), 30 * PERIOD)
    net.down.clear()  # c probes a again: a message from c itself
    assert net.run_until(lambda: Revived("c") in net.events["a"], 10 * PERIOD)
    assert net.cores["a"].state_of("c") == "alive"


def test_news_of_a_death_reaches_fifty_cores() -> None:
    rng = random.Random(7)
    names = [f"n{i:02d}" for i in range(50)]
    net = ScriptedNet.of(names, seed=7)
    for i, name in enumerate(names):  # a ring (so the graph is connected) plus random members
        others = {names[(i + 1) % 50], *rng.sample([n for n in names if n != name], 5)}
        _watching(net, name, sorted(others - {name}))
    watchers_of_victim = [n for n in names if net.cores[n].state_of("n13") is not None]
    net.run(5 * PERIOD)
    net.down.add("n13")
    assert net.run_until(lambda: any(net.died(w, "n13") for w in watchers_of_victim), 30 * PERIOD)
    # From the first death on, the news reaches every live core within a few periods
    # (epidemic spread: ~log n rounds), and every watcher confirms it by its own probes.
    alive = [n for n in names if n != "n13"]
    heard = net.run_until(
        lambda: all((h := net.cores[n].heard("n13")) is not None and h.state == "dead" for n in alive),
        15 * PERIOD,
    )
    assert heard
    assert net.run_until(lambda: all(net.died(w, "n13") for w in watchers_of_victim), 10 * PERIOD)
    assert all(not net.died(n, p) for n in alive for p in alive)  # nobody else was buried


def test_the_messages_a_member_sends_per_period_do_not_grow_with_the_members() -> None:
    per_period = {}
    for size in (4, 16, 64):
        names = [f"p{i}" for i in range(size + 1)]
        net = ScriptedNet.of(names)
        for name in names:
            _watching(net, name, [n for n in names if n != name])
        net.down.add(names[-1])  # one dead member keeps news and indirect probes going
        net.run(100 * PERIOD)
        per_period[size] = max(net.pings[n] for n in names[:-1]) / 100
        assert max(net.news_items) <= MAX_NEWS_PER_MESSAGE
    # One probe a period, now and then a second one out of turn and k indirect ones.
    assert all(1.0 <= rate <= 1.5 for rate in per_period.values()), per_period


def test_rumours_of_death_never_kill_a_live_member_nor_starve_the_round() -> None:
    names = ["a", "x", "y", "z", "w"]
    net = ScriptedNet.of(names)
    _watching(net, "a", ["x", "y", "z", "w"])
    core = net.cores["a"]
    net.down.add("w")  # really dead
    died_at = None
    pings_before = net.pings["a"]
    for _ in range(600):  # 60 periods of a liar shouting that x and y died
        core.on_ping(net.now, "liar", (News("x", "dead", 10**6), News("y", "suspect", 10**6)), 0)
        net.run(STEP)
        if died_at is None and net.died("a", "w"):
            died_at = net.now
    assert core.state_of("x") == "alive" and core.state_of("y") == "alive"
    assert not net.died("a", "x") and not net.died("a", "y")
    assert died_at is not None and died_at <= (2 * 4 + core.suspicion_periods + 2) * PERIOD
    assert net.pings["a"] - pings_before <= 60 * (2 + core.indirect_k)  # bounded, liar or not


def test_newer_news_overrides_older() -> None:
    assert News("p", "alive", 2).overrides(News("p", "dead", 1))
    assert News("p", "suspect", 1).overrides(News("p", "alive", 1))
    assert not News("p", "alive", 1).overrides(News("p", "suspect", 1))
    assert not News("p", "dead", 1).overrides(News("p", "alive", 2))
