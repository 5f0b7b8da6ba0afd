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
from dinet.p2p.host import DIAL_TIMEOUT_S, FoundPeer, PeerHost, peer_of
from dinet.p2p.peer_addrs import TxtLookup, check_peer_addr, peer_named, resolve_addr
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

    `on_answer(peer_id, rtt_ms)` hears of every peer that answered; `on_silent(peer_id,
    why)` of every peer that could not be met, and why. With `meet_new_in`, every peer newly learned
    of is met in the background, in that nursery (a node's full mesh). `report_level`
    is the log level of a peer that could not be met. `txt` answers the TXT lookups of
    `/dnsaddr` bootstrap addresses (default: the system's DNS servers). `dial_timeout_s`
    bounds each dial and each manifest query.
    """

    host: PeerHost
    directory: PeerDirectory
    on_answer: Callable[[PeerId, float], None] = _ignore
    on_silent: Callable[[PeerId, str], None] = _ignore
    meet_new_in: trio.Nursery | None = None
    report_level: int = logging.DEBUG
    txt: TxtLookup | None = None  # where /dnsaddr TXT records are looked up; None: the system's DNS
    dial_timeout_s: float = DIAL_TIMEOUT_S  # a dial, or a manifest query, to one peer
    _pending: set[str] = field(default_factory=set)  # peers being met in the background
    unreached: dict[str, str] = field(default_factory=dict)  # bootstrap address -> why the last dial failed

    async def learn(self, peer_id: PeerId) -> list[Manifest]:
        """Ask a peer for the manifests it knows; the manifests of peers new to us.
        PeerError if it does not answer."""
        await self.host.add_to_routing_table(peer_id)
        signed, rtt_ms = await fetch_manifests(self.host, peer_id, timeout=self.dial_timeout_s)
        self.on_answer(peer_id, rtt_ms)
        new = self.directory.add_from(peer_id, signed)
        for manifest in new:
            self.meet_soon(manifest.peer_id, manifest.addrs)
        return new

    async def meet(self, peer_id: PeerId, addrs: Sequence[str] = ()) -> bool:
        """Connect to a peer (see `PeerHost.connect`) and learn what it knows; whether it answered."""
        try:
            await self.host.connect(peer_id, addrs, self.dial_timeout_s)  # its error says why not
            await self.learn(peer_id)
        except DinetError as exc:
            logger.log(self.report_level, "could not join %s: %s", peer_id, exc)
            self.on_silent(peer_id, str(exc))
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

    async def join(self, bootstrap: Sequence[str], *, skip_connected: bool = False) -> list[PeerId]:
        """Resolve every bootstrap address (DNS names: `dinet.p2p.peer_addrs`), dial every
        peer they name at once and learn from each that answers; the peer ids that
        answered. An address that does not resolve is logged and the others are used.
        ConfigError for an address that names no peer. With `skip_connected`, peers
        connected already are left alone."""
        for addr in bootstrap:
            check_peer_addr(addr)  # every address checked before any is dialed
        named = await self._resolve_all(bootstrap)
        reached: list[PeerId] = []

        async def one(peer_id: PeerId, addrs: list[str]) -> None:
            if not await self._dial_bootstrap(peer_id, addrs):
                return
            reached.append(peer_id)
            try:
                await self.learn(peer_id)
            except DinetError as exc:
                logger.info("could not learn from %s: %s", peer_id, exc)

        async with trio.open_nursery() as nursery:
            for peer_id, addrs in named.items():
                if peer_id != self.host.peer_id and not (skip_connected and self.host.is_connected(peer_id)):
                    nursery.start_soon(one, peer_id, addrs)
        return reached

    async def _resolve_all(self, bootstrap: Sequence[str]) -> dict[PeerId, list[str]]:
        """The peers the addresses name, each with its dialable addresses, resolved at once."""
        named: dict[PeerId, list[str]] = {}

        async def resolve(addr: str) -> None:
            try:
                found = await resolve_addr(addr, txt=self.txt)
            except PeerError as exc:
                logger.warning("bootstrap %s: %s; joining through the other addresses", addr, exc)
                self.unreached[addr] = str(exc)
                return
            if found != [addr]:
                logger.debug("bootstrap %s resolves to %s", addr, ", ".join(found))
            for one in found:
                named.setdefault(peer_of(one), []).append(one)

        async with trio.open_nursery() as nursery:
            for addr in bootstrap:
                nursery.start_soon(resolve, addr)
        return named

    async def _dial_bootstrap(self, peer_id: PeerId, addrs: list[str]) -> bool:
        """Connect to a bootstrap peer at each of its addresses in turn; whether one answered."""
        for addr in addrs:
            try:
                await self.host.connect(peer_id, [addr], self.dial_timeout_s)
            except PeerError as exc:
                logger.info("bootstrap %s: %s", addr, exc)
                self.unreached[addr] = str(exc)
                continue
            self.unreached.pop(addr, None)
            return True
        return False

    def why_unreached(self) -> str:
        """The bootstrap addresses last dialed in vain, each with its reason."""
        return "; ".join(f"{addr} ({why})" for addr, why in self.unreached.items()) or "none dialed"

    async def keep_joined(self, bootstrap: Sequence[str], every_s: float = REDISCOVER_S) -> None:
        """Join the bootstrap peers, and again every `every_s` those that are not connected
        (forever). Names are resolved again each time: a DNS record may have moved."""
        while bootstrap:
            await self.join([a for a in bootstrap if not self._connected_to(a)], skip_connected=True)
            await trio.sleep(every_s)

    def _connected_to(self, addr: str) -> bool:
        """Whether the peer a bootstrap address names is connected (unknown for a bare /dnsaddr)."""
        peer = peer_named(addr)
        return peer is not None and self.host.is_connected(peer)

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
                self.on_silent(peer_id, str(exc))

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
            if await self.host.reach(peer.peer_id, peer.addrs, self.dial_timeout_s):
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
