"""The one joiner: how a client and a node meet peers (real hosts in this process).

The peers here answer manifest queries as a node does, with no engine behind them
(`manifest_peer` is a fake node, named so: these tests are about joining).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio
from tests.helpers import raw_host

from dinet.client.network import Network
from dinet.errors import NoCapablePeer
from dinet.node.manifests import ManifestPublisher, load_of, offer
from dinet.p2p.directory import PeerDirectory
from dinet.p2p.host import PeerHost
from dinet.p2p.joining import Joiner
from dinet.wire.ids import MANIFEST_PROTOCOL, ModelHash
from dinet.wire.keys import SigningKey
from dinet.wire.manifest import Manifest, verify_manifest

MODEL = "ab" * 32


def publisher_of(key: SigningKey, addrs: Callable[[], tuple[str, ...]], serves: bool) -> ManifestPublisher:
    def describe() -> dict[str, object]:
        return {
            "region": "test",
            "addrs": addrs(),
            "models": (offer("tiny", MODEL, "f32", 256, 1),) if serves else (),
            "max_concurrent": 1,
            "tokens_per_s": 0.0,
            "ttft_ms": 0.0,
            "price_per_token": 0.0,
            "load": load_of(0, 0),
        }

    return ManifestPublisher(key, key.peer_id, PeerDirectory(key.peer_id), describe)


@asynccontextmanager
async def manifest_peer(*, serves: bool = False) -> AsyncIterator[tuple[PeerHost, ManifestPublisher]]:
    """A fake node: a host that answers manifest queries (offering MODEL if `serves`)."""
    async with raw_host() as host:
        publisher = publisher_of(host.key, lambda: tuple(host.full_addrs()), serves)
        host.set_handler(MANIFEST_PROTOCOL, publisher.handle_query)
        yield host, publisher


def introduce(known_by: ManifestPublisher, other: ManifestPublisher) -> Manifest:
    """`known_by` now holds `other`'s manifest (as gossip would have brought it)."""
    signed = other.current()
    known_by.directory.add(signed)
    return verify_manifest(signed)


async def test_a_client_learns_of_peers_through_a_bootstrap_peer_and_meets_them_when_it_asks():
    async with manifest_peer() as (a, pa), manifest_peer() as (b, pb), raw_host() as me:
        introduce(pa, pb)
        answered: dict[str, float] = {}
        joiner = Joiner(me, PeerDirectory(), on_answer=answered.__setitem__)
        assert await joiner.join([a.full_addrs()[0]]) == [a.peer_id]
        assert {m.peer_id for m in joiner.directory.manifests()} == {a.peer_id, b.peer_id}
        assert not me.is_connected(b.peer_id)  # a client meets peers only as it needs them
        await joiner.meet_all(joiner.directory.manifests())
        assert me.is_connected(b.peer_id)
        assert set(answered) == {a.peer_id, b.peer_id}


async def test_hearing_of_peers_dials_none_of_them():
    """Membership is bounded: learning a peer's manifest is no reason to connect to it."""
    async with manifest_peer() as (a, pa), manifest_peer() as (b, pb), raw_host() as me:
        introduce(pa, pb)
        joiner = Joiner(me, PeerDirectory(me.peer_id))
        await joiner.join([a.full_addrs()[0]])
        assert joiner.directory.get(b.peer_id) is not None
        assert me.connected_peers() == {a.peer_id}


async def test_a_peer_asked_for_the_servers_of_a_model_passes_on_only_those():
    async with (
        manifest_peer() as (a, pa),
        manifest_peer(serves=True) as (b, pb),
        manifest_peer() as (c, pc),
        raw_host() as me,
    ):
        introduce(pa, pb)
        introduce(pa, pc)
        joiner = Joiner(me, PeerDirectory(me.peer_id))
        await me.connect(a.peer_id, a.full_addrs())
        await joiner.learn(a.peer_id, model_id="tiny")
        assert {m.peer_id for m in joiner.directory.manifests()} == {a.peer_id, b.peer_id}
        await joiner.learn(a.peer_id, model_hash=ModelHash("cd" * 32))  # nobody serves that one
        assert joiner.directory.get(c.peer_id) is None


async def test_a_peer_that_cannot_be_met_is_reported_silent_and_not_counted_a_holder():
    silent: list[tuple[str, str]] = []
    gone_key = SigningKey.generate()  # a holder whose address leads nowhere (nothing listens on port 9)
    gone = publisher_of(gone_key, lambda: (f"/ip4/127.0.0.1/tcp/9/p2p/{gone_key.peer_id}",), serves=True)
    async with raw_host() as me, manifest_peer(serves=True) as (a, pa):
        gone_manifest = introduce(pa, gone)
        joiner = Joiner(me, PeerDirectory(), on_silent=lambda peer, why: silent.append((peer, why)))
        await joiner.join([a.full_addrs()[0]])
        assert gone_key.peer_id in {m.peer_id for m in joiner.directory.manifests()}
        assert await joiner.holders(MODEL) == [a.peer_id]
        assert not await joiner.meet(gone_manifest.peer_id, gone_manifest.addrs)
        [(peer, why)] = silent
        assert peer == gone_key.peer_id and "/tcp/9" in why  # why: the address that failed
        assert await joiner.holders("cd" * 32) == []  # nobody offers another model


async def test_a_signed_manifest_with_addresses_that_are_no_multiaddrs_harms_nobody():
    async with manifest_peer() as (a, _), raw_host() as me:
        key = SigningKey.generate()
        bad = ("garbage", "/ip4/1.2.3.4/tcp/notaport")
        odd = publisher_of(key, lambda: (*bad, *a.full_addrs()), serves=False)
        # What a node does with every manifest it hears of: remember where that peer is.
        directory = PeerDirectory(me.peer_id, lambda m: me.remember_addrs(m.peer_id, m.addrs))
        manifest, is_new = directory.add(odd.current())
        assert is_new and manifest.addrs[0] == "garbage"
        assert me.known_addrs(key.peer_id) == [a.full_addrs()[0].split("/p2p/")[0]]
        assert not await Joiner(me, directory).meet(key.peer_id, bad)


async def test_a_client_that_meets_no_server_of_a_model_says_which_it_heard_of_and_why_not():
    """Before, only "no reachable peer serves …": a peer refused by a node's allowlist, or
    behind a dead address, could not tell why (checked by undoing `Network._why_unmet`)."""
    gone_key = SigningKey.generate()  # a holder whose address leads nowhere (nothing listens on port 9)
    gone = publisher_of(gone_key, lambda: (f"/ip4/127.0.0.1/tcp/9/p2p/{gone_key.peer_id}",), serves=True)
    async with raw_host() as me, manifest_peer() as (a, pa):
        introduce(pa, gone)
        network = Network(me)
        await network.joiner.join([a.full_addrs()[0]])

        with pytest.raises(NoCapablePeer) as caught:
            await network.discover(None, ModelHash(MODEL), timeout=3.0)

    told = str(caught.value)
    assert f"{gone_key.peer_id} serves it but could not be met" in told and "/tcp/9" in told, told


async def test_a_host_dials_no_peer_only_because_it_knows_its_address():
    """py-libp2p's auto-connector would: after any disconnect, and every 30 s, it dials the
    peers its peerstore holds, up to the midpoint of the watermarks. A node met in a DHT
    query would be connected again right after the bound closed its connection."""
    async with raw_host() as a, raw_host() as b, raw_host() as c:
        a.remember_addrs(c.peer_id, c.full_addrs())  # heard of, as from a DHT answer
        await a.dial(b.full_addrs()[0])
        await a.disconnect(b.peer_id)  # the trigger
        with trio.fail_after(30):
            while a.is_connected(b.peer_id):
                await trio.sleep(0.05)
        await trio.sleep(3)  # py-libp2p dials at once after a disconnect, when it does
        assert not a.is_connected(c.peer_id)
