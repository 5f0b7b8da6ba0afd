"""GossipSub for low-rate announcements (signed manifests as a heartbeat).

GossipSub in py-libp2p drops bursts silently (about 10 messages/s per topic), so
only slow, repeated, self-verifying messages go over it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from libp2p.abc import IHost
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
    async with background_trio_service(pubsub), background_trio_service(router):
        await pubsub.wait_until_ready()
        yield pubsub
