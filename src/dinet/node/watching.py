"""The peers a node works with, watched by SWIM, and their manifests kept fresh.

A node watches only its model neighbours (the other servers of its model it keeps
connected for the model's topic) and the relays holding a slot for it: one or two
pings a period whatever their number (`dinet.p2p.membership`). The links to the peers
watching it are kept too, so that a neighbour's link is not closed by one side while
the other keeps probing it. A neighbour declared dead leaves the directory and the
neighbours (another is found), and its connection is closed. A neighbour's manifest,
passed on to clients that ask which peers serve the model, is fetched again after a
ping when it is close to expiry, so gossip need not repeat it.
"""

from __future__ import annotations

import logging
import time

import trio

from dinet.errors import DinetError
from dinet.p2p.directory import PeerDirectory
from dinet.p2p.discovery import fetch_manifests
from dinet.p2p.host import PeerHost
from dinet.p2p.joining import NEIGHBOURS, Joiner
from dinet.p2p.membership import Membership
from dinet.wire.ids import PeerId

logger = logging.getLogger(__name__)

RESYNC_S = 5.0  # how often the watched set follows the neighbours and relays
REFRESH_BEFORE_S = 15.0  # a watched peer's manifest is fetched again this close to expiry
WATCHERS_KEPT = 2 * NEIGHBOURS  # peers watching this node whose links it keeps (more are trimmed as usual)


class PeerWatch:
    def __init__(
        self, host: PeerHost, directory: PeerDirectory, joiner: Joiner, nursery: trio.Nursery
    ) -> None:
        self._host = host
        self._directory = directory
        self._joiner = joiner
        self._nursery = nursery
        self._refreshing: set[PeerId] = set()
        self.membership = Membership(host, on_died=self._died, on_rtt=self._answered)

    async def run(self) -> None:
        """Watch the neighbours and relays as they come and go (forever)."""
        await self._nursery.start(self.membership.run)
        watched: set[PeerId] = set()
        while True:
            wanted = self._joiner.neighbours | set(self._host.reachability().relays)
            for peer_id in wanted - watched:
                self.membership.track(peer_id)
            for peer_id in watched - wanted:
                self.membership.untrack(peer_id)
            watched = wanted
            await trio.sleep(RESYNC_S)

    def kept(self) -> set[PeerId]:
        """The peers whose connections the node keeps however many it has open: its
        neighbours, and the peers watching it (those whose neighbour it is)."""
        return self._joiner.neighbours | self.membership.watchers(limit=WATCHERS_KEPT)

    def _died(self, peer_id: PeerId) -> None:
        logger.info("peer %s stopped answering; dropping it", peer_id)
        self._directory.remove(peer_id, dead=True)
        self._joiner.neighbours.discard(peer_id)
        self._nursery.start_soon(self._host.disconnect, peer_id)

    def _answered(self, peer_id: PeerId, rtt_ms: float) -> None:
        manifest = self._directory.get(peer_id)
        stale = manifest is None or manifest.expires_at - time.time() < REFRESH_BEFORE_S
        if stale and peer_id not in self._refreshing:
            self._refreshing.add(peer_id)
            self._nursery.start_soon(self._refresh, peer_id)

    async def _refresh(self, peer_id: PeerId) -> None:
        try:
            signed, _ = await fetch_manifests(self._host, peer_id, include_known=False)
            self._directory.add_from(peer_id, signed)
        except DinetError as exc:
            logger.debug("could not refresh the manifest of %s: %s", peer_id, exc)
        finally:
            self._refreshing.discard(peer_id)
