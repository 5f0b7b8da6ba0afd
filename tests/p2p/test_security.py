"""Who may connect: Noise only, and a node keeps accepting through connection churn."""

from __future__ import annotations

import pytest
import trio
from libp2p import create_yamux_muxer_option, new_host
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
from tests.helpers import raw_host

from dinet.errors import PeerUnreachable
from dinet.p2p.discovery import fetch_manifests
from dinet.p2p.host import PeerHost, peer_of
from dinet.p2p.identity import libp2p_key_pair
from dinet.wire.keys import SigningKey


async def test_a_plaintext_dialer_is_refused(mesh):
    key = SigningKey.generate()
    plaintext_only = new_host(  # py-libp2p's own host, with its plaintext security only
        key_pair=libp2p_key_pair(key),
        sec_opt={PLAINTEXT_PROTOCOL_ID: InsecureTransport(libp2p_key_pair(key))},
        muxer_opt=create_yamux_muxer_option(),
    )
    async with PeerHost(plaintext_only, key).running(["/ip4/127.0.0.1/tcp/0"]) as host:
        with pytest.raises(PeerUnreachable):
            await host.dial(mesh.nodes[0].addr, timeout=10)
    # ...while a Noise dialer gets in and is answered.
    async with raw_host() as host:
        await host.dial(mesh.nodes[0].addr)
        signed, _ = await fetch_manifests(host, mesh.nodes[0].peer_id)
        assert signed


CYCLES = 2000
DIALERS = 20  # in parallel: py-libp2p spends ~200 ms closing each connection


async def test_a_node_still_accepts_after_thousands_of_connect_disconnect_cycles(mesh):
    """py-libp2p used to keep a slot per inbound connection forever (max 250)."""
    node = mesh.nodes[0]

    async def churn(cycles: int) -> None:
        async with raw_host() as host:
            for _ in range(cycles):
                await host.dial(node.addr)
                await host.disconnect(peer_of(node.addr))

    with trio.fail_after(240):
        async with trio.open_nursery() as nursery:
            for _ in range(DIALERS):
                nursery.start_soon(churn, CYCLES // DIALERS)
    # A fresh peer is still let in and answered.
    async with raw_host() as other:
        with trio.fail_after(10):
            await other.dial(node.addr)
            assert (await fetch_manifests(other, node.peer_id))[0]
