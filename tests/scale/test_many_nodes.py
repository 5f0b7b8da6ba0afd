"""A network of many real `din node` processes: each node keeps a bounded set of
connections, a client joined through any node finds the model it asks for, and a client
keeps being answered while nodes die and new ones join (issue 20).

26 processes on loopback: one `--no-model` node, everyone's only bootstrap address (mDNS
off); one node serving the real model; 24 serving the FAKE engine (`--fake-engine`, model
`fake-echo`), which stands in for a model only to save memory: streams, receipts, routing
and failover are the real code. Nothing here is timed: `bench/scale.py` measures.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from tests.scale.swarm import Member, Swarm, connections

import dinet
from dinet.engine.testing.fake import FAKE_MODEL_ID
from dinet.errors import DinetError

pytestmark = pytest.mark.timeout(600)  # 26 Python processes start on a 2-core machine

FAKE = 24
T = TypeVar("T")
BOUND = 16  # `max_connections` of every node: below the network's size, so a full mesh breaks it
BOUND_ARGS = ["--max-connections", str(BOUND)]
SETTLE_S = 25.0  # after the start: a link is protected for its first 10 s, and trims come every 2 s
WATCH_S = 36.0  # then each node's connections are watched this long
SAMPLE_EVERY_S = 3.0
ROUNDS, PER_ROUND = 2, 3


@pytest.fixture(scope="module")
def swarm(tmp_path_factory) -> Iterator[Swarm]:
    with Swarm(tmp_path_factory.mktemp("many"), extra_args=BOUND_ARGS) as running:
        running.start(fake=FAKE, real=1)
        yield running


def client_of(entry: Member, home: Path) -> dinet.Client:
    """A client that knows only `entry`. Looking for peers may take long on a loaded machine:
    this test is about finding them, not about how fast. So may a peer's answer to a probe:
    in one CI run the client found no peer in 60 s, most likely because the model node
    (one of 28 processes on 2 cores) missed two 3 s probes and left its directory. In
    another (the suite's other worker running its own nodes meanwhile, the whole suite at
    49 minutes) the client met no provider of the model in 60 s: 120 now."""
    return dinet.Client(
        bootstrap=[entry.node.addr], home=home, mdns=False, discover_timeout_s=120, probe_timeout_s=10
    )


def real_node(swarm: Swarm) -> Member:
    return next(m for m in swarm.members if m.kind == "real")


def test_every_node_keeps_its_connections_bounded(swarm):
    """The bound is kept the way a node keeps it: a link opened in the last 10 s, or one in
    use, is never closed, so a node may stand over it for a moment while new peers reach
    it (DHT lookups reach the model node in bursts). What it may not do is stay over: on
    average the nodes' medians over half a minute of samples are within the bound.

    A node that many peers chose as their model neighbour stands above it: it keeps the
    links of 8 watchers, and the others it trims dial it again at their next probe (seen
    in CI: 3 of 26 nodes at a median of 20 for a bound of 16). Nobody bounds how many
    peers choose one node (issue 20 says so), so such a node is allowed half the bound
    again, still below the 25 links a full mesh holds all along."""
    members = {m.pid: m for m in swarm.members}
    samples: dict[int, list[int]] = {pid: [] for pid in members}
    time.sleep(SETTLE_S)  # the last nodes have just started, and everyone has just met them
    deadline = time.monotonic() + WATCH_S
    while time.monotonic() < deadline:
        for pid, n in connections(members).items():
            samples[pid].append(n)
        time.sleep(SAMPLE_EVERY_S)
    medians = {pid: statistics.median(counts) for pid, counts in samples.items()}
    seen = {f"{members[pid].kind} {pid}": samples[pid] for pid in members}
    assert statistics.mean(medians.values()) <= BOUND, f"the nodes' medians average over {BOUND}: {seen}"
    most = BOUND * 3 // 2
    over = {name: counts for name, counts in seen.items() if statistics.median(counts) > most}
    assert not over, f"{len(over)} of {len(members)} nodes mostly over {most} connections: {over}"


def test_a_client_joined_through_the_last_node_finds_the_real_model_and_is_answered(swarm, tmp_path):
    real = real_node(swarm)
    assert swarm.last.kind == "fake"  # the entry knows of the model node only through others
    with client_of(swarm.last, tmp_path / "client") as client:
        answer = client.ask("Name one colour of the rainbow.", model=real.node.model_id, max_tokens=8)
    assert answer.peer_id == real.node.peer_id
    assert answer.model_hash == real.node.model_hash and answer.text.strip()


def test_under_churn_every_request_is_answered_or_gets_a_typed_error(swarm, tmp_path):
    entry, real = swarm.last, real_node(swarm)
    answered: list[str] = []
    typed: list[DinetError] = []
    untyped: list[BaseException] = []
    done = threading.Event()

    def keep_asking() -> None:
        with client_of(entry, tmp_path / "client") as client:
            while not done.is_set():
                try:
                    answer = client.ask("one two three", model=FAKE_MODEL_ID, max_tokens=8)
                    answered.append(answer.text)
                except DinetError as exc:
                    typed.append(exc)
                except Exception as exc:  # noqa: BLE001 - an untyped error is what this test catches
                    untyped.append(exc)

    def asked() -> int:
        return len(answered) + len(typed) + len(untyped)

    asker = threading.Thread(target=keep_asking)
    asker.start()
    try:
        assert until(asked, lambda n: n >= 2, 120.0) >= 2, "the client never asked"
        killed: list[Member] = []
        rng = random.Random(20)
        for _ in range(ROUNDS):
            killed += swarm.replace(PER_ROUND, rng, keep=[entry, real])
            mark = asked()
            # Some requests after each round, when the dead are still in the client's books.
            assert until(asked, lambda n, mark=mark: n >= mark + 3, 120.0) >= mark + 3, "the client stopped"
    finally:
        done.set()
        asker.join()
    assert len(killed) == ROUNDS * PER_ROUND and not any(m.alive for m in killed)
    crashed = swarm.crashed()
    assert not crashed, f"{len(crashed)} nodes ended by themselves; one's log ends: {crashed[0].log_tail()}"
    assert not untyped, f"untyped errors: {untyped!r}"
    assert len(answered) >= asked() - 1, f"{len(typed)} of {asked()} not answered: {typed!r}"
    assert all(text.strip() for text in answered)


def until(read: Callable[[], T], done: Callable[[T], bool], within_s: float) -> T:
    """Poll `read()` every second until `done(value)`, at most `within_s` seconds; the last value."""
    deadline = time.monotonic() + within_s
    value = read()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(1.0)  # polling other processes: no event here says they changed
        value = read()
    return value
