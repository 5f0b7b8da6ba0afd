"""Joining the network and keeping up with it: the one place where a process meets peers.

Peers are named by bootstrap addresses, mDNS on the LAN, DHT provider records (keyed
by model hash and by model id) and other peers' manifests. To meet a peer is to
connect to it and ask for its manifest (and those it knows of the model wanted); the
directory verifies and keeps them. Nobody meets a peer only because it heard of it:
a node keeps its DHT routing table, a few neighbours that serve its model and the
peers it works with; a client meets a bounded sample of a model's providers when it
looks for that model.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial

import trio

from dinet.errors import DinetError, PeerError
from dinet.p2p.directory import PeerDirectory
from dinet.p2p.discovery import fetch_manifests, mdns_discoveries
from dinet.p2p.host import DIAL_TIMEOUT_S, FoundPeer, PeerHost, peer_of
from dinet.p2p.peer_addrs import TxtLookup, check_peer_addr, peer_named, resolve_addr
from dinet.wire.ids import ModelHash, PeerId
from dinet.wire.manifest import Manifest

logger = logging.getLogger(__name__)

REJOIN_S = 10.0  # a process that lost touch with every peer joins its bootstrap peers again this often
REPROVIDE_S = 600.0  # provider records are announced again this often anyway (DHT peers come and go)
NEIGHBOURS = 4  # other servers of its model a node keeps connected: its model topic's mesh
NEIGHBOURS_EVERY_S = 30.0  # how often a node with all its neighbours checks it still has them
NEIGHBOURS_FIRST_S = 5.0  # a missing neighbour is looked for this soon (its records may be on their way)
NEIGHBOURS_LONGEST_S = 300.0  # then less often while lookups find nobody new, up to this
SAMPLE = 8  # providers of a model a client meets at once when it looks for that model
ASKED = 2  # connected peers a client asks at once which servers of a model they know


def _ignore(*_: object) -> None:
    pass


@dataclass
class Joiner:
    """Meets peers for one host and feeds what they know into its directory.

    `on_answer(peer_id, rtt_ms)` hears of every peer that answered; `on_silent(peer_id,
    why)` of every peer that could not be met, and why. `report_level` is the log level
    of a peer that could not be met. `txt` answers the TXT lookups of `/dnsaddr`
    bootstrap addresses (default: the system's DNS servers). `dial_timeout_s` bounds each
    dial and each manifest query.
    """

    host: PeerHost
    directory: PeerDirectory
    on_answer: Callable[[PeerId, float], None] = _ignore
    on_silent: Callable[[PeerId, str], None] = _ignore
    report_level: int = logging.DEBUG
    txt: TxtLookup | None = None  # where /dnsaddr TXT records are looked up; None: the system's DNS
    dial_timeout_s: float = DIAL_TIMEOUT_S  # a dial, or a manifest query, to one peer
    neighbours: set[PeerId] = field(default_factory=set)  # other servers of this node's model, kept connected
    unreached: dict[str, str] = field(default_factory=dict)  # bootstrap address -> why the last dial failed

    async def learn(
        self,
        peer_id: PeerId,
        *,
        include_known: bool = True,
        model_id: str | None = None,
        model_hash: ModelHash | None = None,
    ) -> list[Manifest]:
        """Ask a peer for its manifest and (with `include_known`) those it knows, of peers
        serving the model if one is named; the manifests of peers new to us. PeerError if
        it does not answer."""
        await self.host.add_to_routing_table(peer_id)
        signed, rtt_ms = await fetch_manifests(
            self.host,
            peer_id,
            include_known=include_known,
            model_id=model_id,
            model_hash=model_hash,
            timeout=self.dial_timeout_s,
        )
        self.on_answer(peer_id, rtt_ms)
        return self.directory.add_from(peer_id, signed)

    async def meet(self, peer_id: PeerId, addrs: Sequence[str] = (), *, include_known: bool = True) -> bool:
        """Connect to a peer (see `PeerHost.connect`) and learn what it knows; whether it answered."""
        try:
            await self.host.connect(peer_id, addrs, self.dial_timeout_s)  # its error says why not
            await self.learn(peer_id, include_known=include_known)
        except DinetError as exc:
            logger.log(self.report_level, "could not join %s: %s", peer_id, exc)
            self.on_silent(peer_id, str(exc))
            return False
        return True

    async def meet_all(self, peers: Iterable[FoundPeer | Manifest], *, include_known: bool = True) -> None:
        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(partial(self.meet, include_known=include_known), peer.peer_id, peer.addrs)

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

    async def keep_joined(self, bootstrap: Sequence[str], every_s: float = REJOIN_S) -> None:
        """Join the bootstrap peers and look this host up in the DHT (Kademlia's join), then
        again whenever it has lost touch: no connection and an empty routing table (forever).
        A bootstrap peer that trims our idle connection is not dialed again for that: the
        routing table still knows the network. Names are resolved again each time: a DNS
        record may have moved."""
        while bootstrap:
            if not self.host.connected_peers() or not self.host.routing_table_size():
                reached = await self.join(
                    [a for a in bootstrap if not self._connected_to(a)], skip_connected=True
                )
                if reached:
                    await self.host.explore()
            await trio.sleep(every_s)

    def _connected_to(self, addr: str) -> bool:
        """Whether the peer a bootstrap address names is connected (unknown for a bare /dnsaddr)."""
        peer = peer_named(addr)
        return peer is not None and self.host.is_connected(peer)

    async def keep_neighbours(self, model_hash: ModelHash, want: int = NEIGHBOURS) -> None:
        """Keep `want` other servers of the model connected (forever): the model's gossip
        topic runs over these links. Servers connected already are taken first; providers
        are looked up in the DHT only while some are still missing, and less often each
        time a lookup finds nobody new (the only server of a model would otherwise look
        every few seconds, each lookup opening connections the bound then closes)."""
        wait = NEIGHBOURS_FIRST_S
        while True:
            connected = self.host.connected_peers()
            self.neighbours &= connected
            at_hand = [
                m.peer_id
                for m in self.directory.serving(None, model_hash)
                if m.peer_id in connected and m.peer_id not in self.neighbours
            ]
            room = max(want - len(self.neighbours), 0)
            self.neighbours |= set(random.sample(at_hand, min(room, len(at_hand))))
            if len(self.neighbours) < want:
                before = len(self.neighbours)
                others = [
                    p
                    for p in await self.find_providers(model_hash)
                    if p.peer_id != self.host.peer_id and p.peer_id not in self.neighbours
                ]
                for peer in random.sample(others, min(want - len(self.neighbours), len(others))):
                    if await self.host.reach(peer.peer_id, peer.addrs, self.dial_timeout_s):
                        self.neighbours.add(peer.peer_id)
                found = len(self.neighbours) > before
                wait = NEIGHBOURS_FIRST_S if found else min(2 * wait, NEIGHBOURS_LONGEST_S)
                await trio.sleep(wait)
            else:
                wait = NEIGHBOURS_FIRST_S  # a neighbour lost later is looked for soon
                await trio.sleep(NEIGHBOURS_EVERY_S)

    async def follow_mdns(self) -> None:
        """Meet every peer announced on the LAN (forever; the host must run mDNS)."""
        async with mdns_discoveries(self.host) as found:
            async for peer in found:
                if not self.host.is_connected(peer.peer_id):
                    await self.meet(peer.peer_id, peer.addrs)

    async def pull_from_some(self, peer_ids: Sequence[PeerId], fanout: int) -> None:
        """Learn again from `fanout` of `peer_ids`, chosen at random, at once (a gateway
        keeping the manifests of the peers it routes to fresh)."""

        async def pull(peer_id: PeerId) -> None:
            try:
                await self.learn(peer_id)
            except DinetError as exc:
                logger.debug("directory pull from %s failed: %s", peer_id, exc)
                self.on_silent(peer_id, str(exc))

        async with trio.open_nursery() as nursery:
            for peer_id in random.sample(peer_ids, min(fanout, len(peer_ids))):
                nursery.start_soon(pull, peer_id)

    async def find_providers(
        self, model_hash: ModelHash | None = None, *, model_id: str | None = None
    ) -> list[FoundPeer]:
        """Peers that announced `model_hash` (or any version of `model_id`) in the DHT; none
        if the lookup fails."""
        try:
            return await self.host.find_providers(model_hash, model_id=model_id)
        except PeerError as exc:
            logger.debug("%s", exc)
            return []

    async def look_for(
        self, model_id: str | None, model_hash: ModelHash | None, sample: int = SAMPLE
    ) -> None:
        """Meet a random sample of the peers that announced the model in the DHT (by hash
        if known, else by id) and that are not in the directory, and ask the peers we are
        connected to which servers of it they know."""
        if model_hash is None and model_id is None:
            return
        known = {m.peer_id for m in self.directory.manifests()}
        providers = [
            p
            for p in await self.find_providers(model_hash, model_id=model_id if model_hash is None else None)
            if p.peer_id != self.host.peer_id and p.peer_id not in known
        ]
        chosen = random.sample(providers, min(sample, len(providers)))
        connected = sorted(self.host.connected_peers())
        asked = random.sample(connected, min(ASKED, len(connected)))

        async def ask(peer_id: PeerId) -> None:
            try:
                await self.learn(peer_id, model_id=model_id, model_hash=model_hash)
            except DinetError as exc:
                logger.debug("could not ask %s for servers of the model: %s", peer_id, exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(self.meet_all, chosen, include_known=False))
            for peer_id in asked:
                nursery.start_soon(ask, peer_id)

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

    async def keep_providing(self, model_hash: ModelHash, model_id: str | None = None) -> None:
        """Announce the model in the DHT, by hash and by id (forever): once the routing
        table is not empty, again when it has doubled (the records then reach peers
        closer to their keys), when this host's addresses change (a record carries them:
        circuits through new relays), and every REPROVIDE_S anyway: peers come and go."""
        announced_to, announced_at, last = 0, list[str](), 0.0
        while True:
            size = self.host.routing_table_size()
            addrs = self.host.advertised_addrs()
            changed = size >= 2 * announced_to or addrs != announced_at
            if size and (changed or trio.current_time() - last > REPROVIDE_S):
                try:
                    stored = await self.host.provide(model_hash)
                    if model_id is not None:
                        await self.host.provide(model_id=model_id)
                    announced_to, announced_at, last = size, addrs, trio.current_time()
                    logger.info(
                        "announced the model in the DHT (routing table: %d peers, ok=%s)", size, stored
                    )
                except PeerError as exc:
                    logger.debug("%s", exc)
            await trio.sleep(1.0)
