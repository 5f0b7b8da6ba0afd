"""Joining the network and keeping up with it: the one place where a process meets peers.

Peers are named by bootstrap addresses, mDNS on the LAN, other peers' manifests
(pulled from their directories or gossiped) and DHT provider records. To meet a peer
is to connect to it and ask for the manifests it knows; the directory verifies and
keeps them. Nodes and clients differ only in what they ask of the joiner: a node
meets every peer it learns of and keeps its bootstrap peers; a client meets peers as
it looks for a model.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

import trio

from dinet.errors import DinetError, PeerError
from dinet.p2p.directory import PeerDirectory
from dinet.p2p.discovery import fetch_manifests, mdns_discoveries
from dinet.p2p.host import FoundPeer, PeerHost, peer_of
from dinet.wire.ids import ModelHash, PeerId
from dinet.wire.manifest import Manifest

logger = logging.getLogger(__name__)

REDISCOVER_S = 10.0  # bootstrap peers that dropped are dialed again this often
PROVIDE_EVERY_S = 60.0  # provider records expire and DHT peers come and go


def _ignore(*_: object) -> None:
    pass


@dataclass
class Joiner:
    """Meets peers for one host and feeds what they know into its directory.

    `on_answer(peer_id, rtt_ms)` hears of every peer that answered; `on_silent(peer_id)`
    of every peer that could not be met. With `meet_new_in`, every peer newly learned
    of is met in the background, in that nursery (a node's full mesh). `report_level`
    is the log level of a peer that could not be met.
    """

    host: PeerHost
    directory: PeerDirectory
    on_answer: Callable[[PeerId, float], None] = _ignore
    on_silent: Callable[[PeerId], None] = _ignore
    meet_new_in: trio.Nursery | None = None
    report_level: int = logging.DEBUG
    _pending: set[str] = field(default_factory=set)  # peers being met in the background

    async def learn(self, peer_id: PeerId) -> list[Manifest]:
        """Ask a peer for the manifests it knows; the manifests of peers new to us.
        PeerError if it does not answer."""
        await self.host.add_to_routing_table(peer_id)
        signed, rtt_ms = await fetch_manifests(self.host, peer_id)
        self.host.note_rtt(peer_id, rtt_ms)
        self.on_answer(peer_id, rtt_ms)
        new = self.directory.add_from(peer_id, signed)
        for manifest in new:
            self.meet_soon(manifest.peer_id, manifest.addrs)
        return new

    async def meet(self, peer_id: PeerId, addrs: Sequence[str] = ()) -> bool:
        """Connect to a peer (see `PeerHost.reach`) and learn what it knows; whether it answered."""
        try:
            if not await self.host.reach(peer_id, addrs):
                raise PeerError("no address answered")
            await self.learn(peer_id)
        except DinetError as exc:
            logger.log(self.report_level, "could not join %s: %s", peer_id, exc)
            self.on_silent(peer_id)
            return False
        return True

    async def meet_all(self, peers: Iterable[FoundPeer | Manifest]) -> None:
        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(self.meet, peer.peer_id, peer.addrs)

    def meet_soon(self, peer_id: PeerId, addrs: Sequence[str]) -> None:
        """Meet a peer in the background, if this joiner meets new peers and is not at it already."""
        if self.meet_new_in is None or peer_id in self._pending or self.host.is_connected(peer_id):
            return
        self._pending.add(peer_id)
        self.meet_new_in.start_soon(self._meet_pending, peer_id, addrs)

    async def _meet_pending(self, peer_id: PeerId, addrs: Sequence[str]) -> None:
        try:
            await self.meet(peer_id, addrs)
        finally:
            self._pending.discard(peer_id)

    async def join(self, bootstrap: Sequence[str]) -> list[PeerId]:
        """Dial every bootstrap address at once and learn from each peer that answers;
        the peer ids that answered. ConfigError for an address that names no peer."""
        for addr in bootstrap:
            peer_of(addr)  # every address checked before any is dialed
        reached: list[PeerId] = []

        async def one(addr: str) -> None:
            try:
                peer_id = await self.host.dial(addr)
            except PeerError as exc:
                logger.info("bootstrap: %s", exc)
                return
            reached.append(peer_id)
            try:
                await self.learn(peer_id)
            except DinetError as exc:
                logger.info("could not learn from %s: %s", peer_id, exc)

        async with trio.open_nursery() as nursery:
            for addr in bootstrap:
                nursery.start_soon(one, addr)
        return reached

    async def keep_joined(self, bootstrap: Sequence[str], every_s: float = REDISCOVER_S) -> None:
        """Join the bootstrap peers, and again every `every_s` those that are not connected (forever)."""
        while bootstrap:
            await self.join([a for a in bootstrap if not self.host.is_connected(peer_of(a))])
            await trio.sleep(every_s)

    async def follow_mdns(self) -> None:
        """Meet every peer announced on the LAN (forever; the host must run mDNS)."""
        async with mdns_discoveries(self.host) as found:
            async for peer in found:
                if not self.host.is_connected(peer.peer_id):
                    await self.meet(peer.peer_id, peer.addrs)

    async def pull_directories(
        self, every_s: float, fanout: int, lull: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Learn again from `fanout` random known peers every `every_s` (forever; `lull` is
        awaited before each round). Gossip alone may miss a peer (it drops messages under
        load and needs a mesh first); pulling from random peers makes directories converge."""
        while True:
            await trio.sleep(every_s)
            if lull is not None:
                await lull()
            await self.pull_from_some([m.peer_id for m in self.directory.manifests()], fanout)

    async def pull_from_some(self, peer_ids: Sequence[PeerId], fanout: int) -> None:
        """Learn again from `fanout` of `peer_ids`, chosen at random, at once."""

        async def pull(peer_id: PeerId) -> None:
            try:
                await self.learn(peer_id)
            except DinetError as exc:
                logger.debug("directory pull from %s failed: %s", peer_id, exc)
                self.on_silent(peer_id)

        async with trio.open_nursery() as nursery:
            for peer_id in random.sample(peer_ids, min(fanout, len(peer_ids))):
                nursery.start_soon(pull, peer_id)

    async def find_providers(self, model_hash: ModelHash) -> list[FoundPeer]:
        """Peers that announced `model_hash` in the DHT; none if the lookup fails."""
        try:
            return await self.host.find_providers(model_hash)
        except PeerError as exc:
            logger.debug("%s", exc)
            return []

    async def holders(self, model_hash: ModelHash) -> list[PeerId]:
        """Peers connected now that say they hold `model_hash`: in manifests or DHT records."""
        named = {
            m.peer_id: FoundPeer(m.peer_id, m.addrs)
            for m in self.directory.manifests()
            if any(o.model_hash == model_hash for o in m.models)
        }
        for provider in await self.find_providers(model_hash):
            named.setdefault(provider.peer_id, provider)
        reached: list[PeerId] = []

        async def reach(peer: FoundPeer) -> None:
            if await self.host.reach(peer.peer_id, peer.addrs):
                reached.append(peer.peer_id)

        async with trio.open_nursery() as nursery:
            for peer in named.values():
                if peer.peer_id != self.host.peer_id:
                    nursery.start_soon(reach, peer)
        return reached

    async def keep_providing(self, model_hash: ModelHash) -> None:
        """Announce the model in the DHT whenever the routing table or this host's
        addresses change (a record carries them: circuits through new relays), and every
        PROVIDE_EVERY_S anyway: records expire and peers come and go (forever)."""
        announced_to, announced_at, last = -1, list[str](), 0.0
        while True:
            size = self.host.routing_table_size()
            addrs = self.host.advertised_addrs()
            changed = size != announced_to or addrs != announced_at
            if size and (changed or trio.current_time() - last > PROVIDE_EVERY_S):
                try:
                    stored = await self.host.provide(model_hash)
                    announced_to, announced_at, last = size, addrs, trio.current_time()
                    logger.info(
                        "announced the model in the DHT (routing table: %d peers, ok=%s)", size, stored
                    )
                except PeerError as exc:
                    logger.debug("%s", exc)
            await trio.sleep(1.0)
