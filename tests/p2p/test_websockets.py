"""WebSocket listeners on loopback: a host on TCP and /ws at once, the relay it offers
browsers, many connections over its life, and its settings."""

from __future__ import annotations

import pytest
import trio
from tests.p2p.relaying import ECHO, echo

from dinet.config import NodeSettings
from dinet.errors import ConfigError
from dinet.p2p.host import build_host, open_host
from dinet.p2p.reach import ReachConfig
from dinet.p2p.relay import RelayPolicy
from dinet.p2p.streams import FramedStream
from dinet.p2p.websockets import WebSocketTls, is_websocket
from dinet.wire.keys import SigningKey

TCP_AND_WS = ["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/tcp/0/ws"]
HOP = "/libp2p/circuit/relay/0.2.0/hop"


def test_websocket_addresses_are_told_apart():
    assert is_websocket("/ip4/127.0.0.1/tcp/4001/ws")
    assert is_websocket("/dns4/node.example/tcp/443/wss/p2p/12D3KooWA")
    assert not is_websocket("/ip4/127.0.0.1/tcp/4001")
    assert not is_websocket("/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWA/p2p-circuit/p2p/12D3KooWB")


async def test_a_host_listens_on_tcp_and_ws_and_serves_over_both():
    async with (
        open_host(SigningKey.generate(), TCP_AND_WS) as server,
        open_host(SigningKey.generate(), TCP_AND_WS) as ws_peer,
        open_host(SigningKey.generate(), TCP_AND_WS) as tcp_peer,
    ):
        server.set_handler(ECHO, echo)
        [ws_addr] = server.browser_addrs()
        tcp_addr = _tcp_addr(server)
        # Each peer knows only the one address: its connection runs there.
        for peer, addr in ((ws_peer, ws_addr), (tcp_peer, tcp_addr)):
            await peer.dial(addr)
            assert await _echoed(peer, server.peer_id, b"over " + addr.encode())


async def test_a_ws_listener_accepts_after_many_connections_come_and_go():
    # py-libp2p kept a slot per inbound connection for a host's whole life: a node would
    # end up refusing every tab. Hundreds of tabs come and go over a node's life.
    cycles, dialers = 300, 10  # in parallel: py-libp2p spends ~200 ms closing each connection
    async with open_host(SigningKey.generate(), TCP_AND_WS) as server:
        server.set_handler(ECHO, echo)
        [ws_addr] = server.browser_addrs()

        async def churn() -> None:
            # (A host dials /ws only with the transport, which listening on /ws gives it.)
            async with open_host(SigningKey.generate(), TCP_AND_WS) as tab:
                for _ in range(cycles // dialers):
                    await tab.dial(ws_addr)
                    await tab.disconnect(server.peer_id)

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for _ in range(dialers):
                    nursery.start_soon(churn)
        async with open_host(SigningKey.generate(), TCP_AND_WS) as last:
            await last.dial(ws_addr)
            assert await _echoed(last, server.peer_id, b"still here")


async def test_a_host_on_ws_relays_for_browsers_though_not_public():
    relay = ReachConfig(hole_punching=False, relay=RelayPolicy())
    async with (
        open_host(SigningKey.generate(), TCP_AND_WS, reach=relay) as for_tabs,
        open_host(SigningKey.generate(), TCP_AND_WS[:1], reach=relay) as tcp_only,
        open_host(SigningKey.generate(), TCP_AND_WS[:1]) as peer,
    ):
        assert for_tabs.reachability().state != "public" and tcp_only.reachability().state != "public"
        await peer.dial(_tcp_addr(for_tabs))
        await peer.dial(_tcp_addr(tcp_only))
        with trio.fail_after(10):
            while not peer.speaks(for_tabs.peer_id, HOP):
                await trio.sleep(0.05)
        assert not peer.speaks(tcp_only.peer_id, HOP)


async def test_wss_without_a_certificate_is_a_config_error():
    host = build_host(SigningKey.generate())
    with pytest.raises(ConfigError, match="--ws-cert"):
        async with host.running(["/ip4/127.0.0.1/tcp/0/wss"]):
            pass


def test_a_certificate_that_does_not_load_is_a_config_error(tmp_path):
    (tmp_path / "cert.pem").write_text("not a certificate")
    (tmp_path / "key.pem").write_text("not a key")
    with pytest.raises(ConfigError, match="cannot use"):
        WebSocketTls(tmp_path / "cert.pem", tmp_path / "key.pem").server_context()


def test_node_settings_want_a_certificate_for_wss_and_both_files(tmp_path):
    with pytest.raises(ValueError, match="needs --ws-cert"):
        NodeSettings(home=tmp_path, listen=["/ip4/0.0.0.0/tcp/443/wss"])
    with pytest.raises(ValueError, match="go together"):
        NodeSettings(home=tmp_path, ws_cert=tmp_path / "cert.pem")
    NodeSettings(home=tmp_path, listen=["/ip4/0.0.0.0/tcp/0/ws"])  # plain /ws needs none


def _tcp_addr(host) -> str:
    return next(a for a in host.full_addrs() if not is_websocket(a))


async def _echoed(host, peer_id, payload: bytes) -> bool:
    framed = FramedStream(await host.open_stream(peer_id, ECHO, 5.0))
    await framed.send_payload(payload)
    got = await framed.receive()
    await framed.close()
    return got == payload
