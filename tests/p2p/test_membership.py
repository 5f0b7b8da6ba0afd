"""SWIM membership over real hosts on loopback: deaths, indirect probes, bad frames."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from pathlib import Path

import trio
from tests.helpers import raw_host

from dinet.errors import PeerError
from dinet.p2p.allowlist import Allowlist
from dinet.p2p.gate import PeerGate
from dinet.p2p.host import PeerHost, open_host
from dinet.p2p.membership import Membership, new_swim
from dinet.p2p.streams import FramedStream, open_framed
from dinet.wire.ids import PeerId
from dinet.wire.keys import SigningKey
from dinet.wire.membership import SWIM_PROTOCOL, SwimAck, SwimPing, decode_swim_answer

LIMIT_S = 60.0  # generous: the machine may be loaded; the tests poll, they do not wait it out
REPO = Path(__file__).resolve().parents[2]


@contextmanager
def peer_process(count: int = 1) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """`count` hosts serving /dinet/swim/1 in a process of their own, and their addresses."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.p2p.swim_peers", str(count)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        yield process, json.loads(process.stdout.readline())["addrs"]
    finally:
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


def fast_membership(host: PeerHost, **callbacks: Callable[..., None]) -> Membership:
    """Short periods, so that tests see deaths in seconds."""
    core = new_swim(host.peer_id, period_s=0.5, ack_timeout_s=0.2, suspicion_periods=2)
    return Membership(host, core, **callbacks)


@asynccontextmanager
async def running(membership: Membership) -> AsyncIterator[Membership]:
    async with trio.open_nursery() as nursery:
        await nursery.start(membership.run)
        yield membership
        nursery.cancel_scope.cancel()


async def until(condition: Callable[[], bool], limit: float = LIMIT_S) -> None:
    with trio.fail_after(limit):
        while not condition():
            await trio.sleep(0.05)


async def test_a_killed_peer_is_declared_dead_and_a_live_one_never_is():
    died: list[PeerId] = []
    acks: dict[PeerId, int] = {}

    def on_rtt(peer_id: PeerId, rtt_ms: float) -> None:
        acks[peer_id] = acks.get(peer_id, 0) + 1

    with peer_process() as (doomed, doomed_addrs), peer_process() as (_, live_addrs):
        async with (
            raw_host() as host,
            running(fast_membership(host, on_died=died.append, on_rtt=on_rtt)) as m,
        ):
            victim, survivor = (await host.dial(doomed_addrs[0])), (await host.dial(live_addrs[0]))
            m.track(victim)
            m.track(survivor)
            await until(lambda: acks.get(victim, 0) >= 2 and acks.get(survivor, 0) >= 2)
            assert host.rtt_ms(survivor) is not None  # round trips reach the host too

            doomed.kill()
            await until(lambda: victim in died)
            seen = acks[survivor]
            await until(lambda: acks[survivor] >= seen + 10)  # ten more probes answered after
    assert died == [victim]


def _allowing(path: Path, *peers: PeerId) -> PeerGate:
    path.write_text("".join(f"{p}\n" for p in peers))
    return PeerGate(allowlist=Allowlist(path))


@asynccontextmanager
async def c_admits_only_b(tmp_path: Path) -> AsyncIterator[tuple[PeerHost, PeerHost, PeerHost]]:
    """Hosts A, B and C on loopback; C's allowlist names only B, so A cannot reach C."""
    a_key, b_key, c_key = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
    gate = _allowing(tmp_path / "allow.txt", PeerId(b_key.peer_id))
    async with (
        open_host(a_key, ["/ip4/127.0.0.1/tcp/0"]) as a,
        open_host(b_key, ["/ip4/127.0.0.1/tcp/0"]) as b,
        open_host(c_key, ["/ip4/127.0.0.1/tcp/0"], gate=gate) as c,
    ):
        yield a, b, c


async def test_a_peer_we_cannot_reach_is_probed_through_a_third_host(tmp_path: Path):
    """C lets B in, not A: A's pings to C fail, and B pings C for A."""
    suspected: list[PeerId] = []
    async with (
        c_admits_only_b(tmp_path) as (a, b, c),
        running(fast_membership(b)),
        running(fast_membership(c)),
        running(fast_membership(a, on_suspected=suspected.append)) as watch,
    ):
        await b.dial(c.full_addrs()[0])
        await a.dial(b.full_addrs()[0])
        a.remember_addrs(c.peer_id, c.full_addrs())
        watch.track(b.peer_id)
        watch.track(c.peer_id)
        await until(lambda: watch.counts["indirect_acks"] >= 5)
        assert not a.is_connected(c.peer_id)
        assert watch.core.state_of(c.peer_id) == "alive" and c.peer_id not in suspected


async def test_a_malformed_ping_is_refused_and_others_are_still_answered():
    async with (
        raw_host() as server,
        raw_host() as prober,
        raw_host() as rogue,
        running(fast_membership(server)) as served,
        running(fast_membership(prober)) as watch,
    ):
        watch.track(await prober.dial(server.full_addrs()[0]))
        await rogue.dial(server.full_addrs()[0])
        await until(lambda: watch.counts["acks"] >= 2)

        for bad in (b"{not json", b'{"kind": "swim_ping", "probe_id": -1, "incarnation": 0}', b"x" * 5000):
            framed = await open_framed(rogue, server.peer_id, SWIM_PROTOCOL, LIMIT_S)
            await framed.send_payload(bad)
            assert await _answer_or_none(framed) is None  # the stream is reset, unanswered
        assert served.counts["refused"] == 3

        acked = watch.counts["acks"]
        await until(lambda: watch.counts["acks"] >= acked + 3)  # the prober is still answered
        framed = FramedStream(await rogue.open_stream(server.peer_id, SWIM_PROTOCOL, LIMIT_S))
        await framed.send(SwimPing(probe_id=7, incarnation=0))
        with trio.fail_after(LIMIT_S):
            answer = decode_swim_answer(await framed.receive() or b"")
        assert isinstance(answer, SwimAck) and answer.probe_id == 7  # and so is the rogue, once polite


async def _answer_or_none(framed: FramedStream) -> bytes | None:
    with trio.fail_after(LIMIT_S):
        try:
            return await framed.receive()
        except PeerError:
            return None


async def test_a_helper_not_connected_to_the_target_says_no_rather_than_dial_it(tmp_path: Path):
    """C lets B in, not A, as in the test of indirect probes; but B has never connected to
    C, it only holds C's addresses. B's connections are bounded, so it will not open one
    to a stranger for A's probe, and C stays suspect."""
    suspected: list[PeerId] = []
    async with (
        c_admits_only_b(tmp_path) as (a, b, c),
        running(fast_membership(b)) as helper,
        running(fast_membership(a, on_suspected=suspected.append)) as watch,
    ):
        await a.dial(b.full_addrs()[0])
        a.remember_addrs(c.peer_id, c.full_addrs())
        b.remember_addrs(c.peer_id, c.full_addrs())
        watch.track(b.peer_id)
        watch.track(c.peer_id)
        await until(lambda: helper.counts["forwarded"] >= 1 and c.peer_id in suspected)
        await trio.sleep(1)  # a dial for the probe, had B started one, has connected by now
        assert not b.is_connected(c.peer_id)
        assert watch.counts["indirect_acks"] == 0 and c.peer_id in suspected


async def test_the_peers_pinging_a_host_are_its_watchers():
    async with (
        raw_host() as server,
        raw_host() as prober,
        running(fast_membership(server)) as served,
        running(fast_membership(prober)) as watch,
    ):
        assert served.watchers(limit=8) == set()
        watch.track(await prober.dial(server.full_addrs()[0]))
        await until(lambda: served.counts["answered"] >= 2)
        assert served.watchers(limit=8) == {prober.peer_id}
        assert served.watchers(limit=0) == set()
        watch.untrack(server.peer_id)
        await until(lambda: not served.watchers(limit=8))  # a peer that stopped pinging is forgotten


async def test_a_watcher_tracking_several_peers_stays_a_watcher_between_its_pings():
    """A peer pings each member it tracks once a round, in an order shuffled every round:
    tracking 6 peers, it pings us every 6 periods, and up to 11 apart. It stays our watcher
    in between; otherwise a node over its connection bound would close the link of a peer
    that keeps it as a neighbour, to be dialed again at that peer's next ping."""
    async with AsyncExitStack() as stack:
        hosts = [await stack.enter_async_context(raw_host()) for _ in range(7)]
        served, watch, *_ = [await stack.enter_async_context(running(fast_membership(h))) for h in hosts]
        for other in [hosts[0], *hosts[2:]]:
            watch.track(await hosts[1].dial(other.full_addrs()[0]))
        await until(lambda: served.counts["answered"] >= 1)
        checks = missing = 0
        with trio.move_on_after(2 * 12 * watch.core.period_s):  # two rounds at their longest
            while True:
                checks += 1
                missing += hosts[1].peer_id not in served.watchers(limit=8)
                await trio.sleep(0.1)
        assert served.counts["answered"] >= 2  # it pinged us again meanwhile
        assert missing == 0, f"not a watcher at {missing} of {checks} checks"
