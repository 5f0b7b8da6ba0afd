"""GossipSub for low-rate announcements (signed manifests as a heartbeat).

GossipSub in py-libp2p drops bursts silently (about 10 messages/s per topic), so
only slow, repeated, self-verifying messages go over it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from libp2p.abc import IHost, INetStream
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service

logger = logging.getLogger(__name__)


@asynccontextmanager
async def running_pubsub(host: IHost) -> AsyncIterator[Pubsub]:
    router = GossipSub(
        protocols=[PROTOCOL_ID_V11, PROTOCOL_ID],
        degree=6,
        degree_low=4,
        degree_high=12,
        heartbeat_interval=2,
        # Its eclipse protection wants mesh peers on 3+ distinct IPs, which
        # prunes every mesh of nodes sharing one machine or one NAT.
        eclipse_protection_enabled=False,
    )
    pubsub = Pubsub(host, router)
    for protocol in router.get_protocols():
        host.set_stream_handler(protocol, partial(_read_peer_messages, pubsub))
    async with background_trio_service(pubsub), background_trio_service(router):
        await pubsub.wait_until_ready()
        yield pubsub


async def _read_peer_messages(pubsub: Pubsub, stream: INetStream) -> None:
    """Pubsub's own stream handler, with what it lets escape caught: py-libp2p 0.8.1 lets
    a protobuf DecodeError out of a peer's malformed RPC, which ended the whole node (seen
    in 4 of 26 nodes of tests/scale). The peer's stream is reset and it is forgotten."""
    try:
        await pubsub.stream_handler(stream)
    except Exception as exc:  # whatever a peer's bytes make the library raise
        logger.info("dropped the gossip stream of %s: %s", stream.muxed_conn.peer_id, exc)
        await stream.reset()
        pubsub._handle_dead_peer(stream.muxed_conn.peer_id)
