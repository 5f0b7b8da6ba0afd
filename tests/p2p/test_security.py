"""Who may connect: Noise only, and a node keeps accepting through connection churn."""

from __future__ import annotations

import pytest
import trio
from libp2p import create_yamux_muxer_option, new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
from tests.helpers import raw_host

from dinet.errors import PeerUnreachable
from dinet.p2p.discovery import dial, fetch_manifests, peer_info_from
from dinet.p2p.host import running_host


async def test_a_plaintext_dialer_is_refused(mesh):
    key_pair = create_new_key_pair()
    plaintext_only = new_host(
        key_pair=key_pair,
        sec_opt={PLAINTEXT_PROTOCOL_ID: InsecureTransport(key_pair)},
        muxer_opt=create_yamux_muxer_option(),
    )
    async with running_host(plaintext_only, ["/ip4/127.0.0.1/tcp/0"]):
        with pytest.raises(PeerUnreachable):
            await dial(plaintext_only, peer_info_from(mesh.nodes[0].addr), timeout=10)
    # ...while a Noise dialer gets in and is answered.
    async with raw_host() as host:
        await dial(host, peer_info_from(mesh.nodes[0].addr))
        signed, _ = await fetch_manifests(host, mesh.nodes[0].peer_id)
        assert signed


CYCLES = 2000
DIALERS = 20  # in parallel: py-libp2p spends ~200 ms closing each connection


async def test_a_node_still_accepts_after_thousands_of_connect_disconnect_cycles(mesh):
    """py-libp2p used to keep a slot per inbound connection forever (max 250)."""
    node = mesh.nodes[0]
    info = peer_info_from(node.addr)

    async def churn(cycles: int) -> None:
        async with raw_host() as host:
            for _ in range(cycles):
                await dial(host, info)
                await host.disconnect(info.peer_id)

    with trio.fail_after(240):
        async with trio.open_nursery() as nursery:
            for _ in range(DIALERS):
                nursery.start_soon(churn, CYCLES // DIALERS)
    # A fresh peer is still let in and answered.
    async with raw_host() as other:
        with trio.fail_after(10):
            await dial(other, info)
            assert (await fetch_manifests(other, node.peer_id))[0]
