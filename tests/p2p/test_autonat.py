"""AutoNAT on loopback: real hosts in this process ask each other to be dialed back.

The server side is tested at the wire (`ask_dial_back`), the client side through the
host's `reachability()`. How the NAT lab decides public and private: tests/reach.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from libp2p.peer.id import ID
from tests.helpers import raw_host

from dinet.errors import ConfigError
from dinet.p2p.addresses import AddressBook
from dinet.p2p.autonat import ask_dial_back
from dinet.p2p.host import PeerHost, build_host
from dinet.wire.keys import SigningKey

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
DEADLINE_S = 30.0


@asynccontextmanager
async def checking_host(announce: list[str] = ()) -> AsyncIterator[PeerHost]:  # type: ignore[assignment]
    """A host that asks its peers to dial it back, as a node does."""
    host = build_host(SigningKey.generate())
    async with host.running(LOOPBACK, check_reach=True, announce=announce):
        yield host


async def wait_for_state(host: PeerHost, state: str) -> None:
    with trio.fail_after(DEADLINE_S):
        while host.reachability().state != state:
            await trio.sleep(0.05)


def bare(addr: str) -> str:
    return addr.split("/p2p/")[0]


async def unused_port() -> int:
    """A loopback port where nothing listens (bound, then let go)."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port: int = listener.socket.getsockname()[1]
    await listener.aclose()
    return port


# --- the server: a dial-back proves something ---


async def test_a_peer_dials_back_the_address_the_asker_listens_on():
    async with raw_host() as server, raw_host() as asker:
        await asker.dial(server.full_addrs()[0])
        answer = await ask_dial_back(asker._raw, ID.from_base58(server.peer_id), bare(asker.full_addrs()[0]))
        assert answer == "reached"


async def test_a_dial_back_uses_a_fresh_connection_not_the_one_the_request_came_over():
    """Nothing listens at the address asked about; the asker and the server are connected.

    py-libp2p 0.8.1's AutoNAT server dials back with `host.connect`, which returns at once
    on the existing connection, so it answers OK here. Checked by making `dial_fresh` call
    `raw.connect(PeerInfo(peer, [addr]))` instead: this test then fails ("reached").
    """
    async with raw_host() as server, raw_host() as asker:
        await asker.dial(server.full_addrs()[0])
        nowhere = f"/ip4/127.0.0.1/tcp/{await unused_port()}"
        assert await ask_dial_back(asker._raw, ID.from_base58(server.peer_id), nowhere) == "failed"
        assert asker.is_connected(server.peer_id)  # the dial-back touched no existing connection


async def test_a_dial_back_reaching_another_peer_at_that_address_is_a_failure():
    """The Noise handshake proves who answered: a listener that is not the asker does not count."""
    async with raw_host() as server, raw_host() as asker, raw_host() as someone_else:
        await asker.dial(server.full_addrs()[0])
        elsewhere = bare(someone_else.full_addrs()[0])
        assert await ask_dial_back(asker._raw, ID.from_base58(server.peer_id), elsewhere) == "failed"


async def test_a_request_to_dial_another_ip_is_refused_and_nothing_is_dialed():
    """A node cannot make others dial third parties: only the IP the request came from."""
    accepted: list[object] = []
    async with raw_host() as server, raw_host() as asker, trio.open_nursery() as nursery:
        third_party = (await trio.open_tcp_listeners(0, host="127.0.0.2"))[0]
        port = third_party.socket.getsockname()[1]

        async def count(stream: trio.SocketStream) -> None:
            accepted.append(stream)
            await stream.aclose()

        nursery.start_soon(trio.serve_listeners, count, [third_party])
        await asker.dial(server.full_addrs()[0])
        to_server = ID.from_base58(server.peer_id)
        assert await ask_dial_back(asker._raw, to_server, f"/ip4/127.0.0.2/tcp/{port}") == "refused"
        assert await ask_dial_back(asker._raw, to_server, f"/ip4/0.0.0.0/tcp/{port}") == "refused"
        assert accepted == []
        nursery.cancel_scope.cancel()


# --- the client: two distinct peers must agree ---


async def test_a_host_that_two_peers_dial_back_is_public_at_its_listen_address():
    async with raw_host() as one, raw_host() as two, checking_host() as me:
        await me.dial(one.full_addrs()[0])
        await me.dial(two.full_addrs()[0])
        await wait_for_state(me, "public")
        listening = bare(me.full_addrs()[0])
        assert me.reachability().addrs == (listening,)
        assert me.reachability().reason == f"2 peers dialed back {listening}"
        assert me.advertised_addrs() == [f"{listening}/p2p/{me.peer_id}"]


async def test_one_peer_alone_leaves_reachability_unknown_and_a_second_decides():
    async with raw_host() as one, raw_host() as two, raw_host() as me:
        book = AddressBook(me._raw, me.peer_id)
        await me.dial(one.full_addrs()[0])
        await book.check_once()  # one asked, and it dialed back
        assert book.reachability().state == "unknown"
        assert book.reachability().reason == "fewer than 2 peers to ask"
        assert book.advertised() == me.full_addrs()  # while unknown: the listen addresses, as before
        await me.dial(two.full_addrs()[0])
        await book.check_once()
        assert book.reachability().state == "public"


async def test_an_announced_address_is_advertised_and_reported_when_peers_cannot_dial_it():
    dead = f"/ip4/127.0.0.1/tcp/{await unused_port()}"
    async with raw_host() as one, raw_host() as two, checking_host(announce=[dead]) as me:
        assert f"{dead}/p2p/{me.peer_id}" in me.advertised_addrs()  # before any peer said anything
        await me.dial(one.full_addrs()[0])
        await me.dial(two.full_addrs()[0])
        with trio.fail_after(DEADLINE_S):
            while "not dialed back" not in me.reachability().reason:
                await trio.sleep(0.05)
        assert me.reachability().state == "public"  # its listen address was dialed back
        assert f"announced {dead} not dialed back" in me.reachability().reason
        assert f"{dead}/p2p/{me.peer_id}" in me.advertised_addrs()  # the operator said so


@pytest.mark.parametrize(
    "announce",
    ["not-an-address", f"/ip4/127.0.0.1/tcp/4001/p2p/{SigningKey.generate().peer_id}"],
    ids=["not-an-address", "loopback"],  # fixed: parallel test workers must collect the same tests
)
async def test_a_bad_announced_address_is_a_config_error(announce):
    with pytest.raises(ConfigError):
        async with checking_host(announce=[announce]):
            pass


async def test_a_websocket_listen_address_is_not_asked_about_and_leaves_the_host_public():
    # Peers dial back TCP only: asked about its /ws address too, they would call it
    # unreachable, and the host private. That address is for browsers.
    host = build_host(SigningKey.generate())
    listen = [*LOOPBACK, "/ip4/127.0.0.1/tcp/0/ws"]
    async with raw_host() as one, raw_host() as two, host.running(listen, check_reach=True) as me:
        [ws] = me.browser_addrs()
        await me.dial(one.full_addrs()[0])
        await me.dial(two.full_addrs()[0])
        await wait_for_state(me, "public")
        assert me.reachability().addrs == tuple(bare(a) for a in me.full_addrs() if a != ws)
