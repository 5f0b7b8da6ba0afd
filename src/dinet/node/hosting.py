"""A node passes on the manifests of the peers that only it can reach.

A browser tab dials out to one node, holds a relay reservation there and serves through
it, but it runs neither the DHT nor GossipSub, so nobody else would hear of it. The node
it relays for does that part: every `HOSTED_EVERY_S` it asks each such peer (one holding
a reservation here that does not gossip itself) for its signed manifest, keeps it in its
directory, so it goes out in this node's answers to manifest queries, and publishes it
on its models' topics when its offer changes, as the peer would itself. Manifests are
verified as any others; a peer that stops answering simply expires."""

from __future__ import annotations

import logging

import trio

from dinet.errors import DinetError
from dinet.node.manifests import OFFER_FIELDS
from dinet.p2p.directory import PeerDirectory
from dinet.p2p.discovery import fetch_manifests
from dinet.p2p.host import PeerHost
from dinet.wire.ids import PeerId, model_topic

logger = logging.getLogger(__name__)

HOSTED_EVERY_S = 10.0  # well within a manifest's lifetime (MANIFEST_TTL_S)
LOOK_EVERY_S = 1.0  # a peer that just reserved is asked at once: it wants to be found
GOSSIP_PROTOCOL = "/meshsub/1.1.0"  # a peer that speaks it publishes its own manifest


class Hosting:
    def __init__(self, host: PeerHost, directory: PeerDirectory) -> None:
        self._host = host
        self._directory = directory
        self._offers: dict[PeerId, dict[str, object]] = {}  # what was last published, per peer
        self._asked: dict[PeerId, float] = {}  # when each hosted peer was last asked

    def hosted(self) -> set[PeerId]:
        """The peers this node speaks for now. (Not told by what identify says they serve:
        py-libp2p 0.8.1 records nothing of a tab's identify; one that does not answer a
        manifest query is asked again only after HOSTED_EVERY_S.)"""
        return {peer for peer in self._host.reserved_here() if not self._host.speaks(peer, GOSSIP_PROTOCOL)}

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                hosted, now = self.hosted(), trio.current_time()
                for gone in set(self._asked) - hosted:
                    del self._asked[gone]
                    self._offers.pop(gone, None)
                for peer in hosted:
                    if now - self._asked.get(peer, -HOSTED_EVERY_S) >= HOSTED_EVERY_S:
                        self._asked[peer] = now
                        nursery.start_soon(self._pass_on, peer)
                await trio.sleep(LOOK_EVERY_S)

    async def _pass_on(self, peer: PeerId) -> None:
        try:
            signed, _ = await fetch_manifests(self._host, peer, include_known=False)
        except DinetError as exc:
            logger.debug("hosted peer %s gave no manifest: %s", peer, exc)
            return
        self._directory.add_from(peer, signed[:1])  # its own comes first
        manifest, held = self._directory.get(peer), self._directory.signed_of(peer)
        if manifest is None or held is None:
            return
        offer = {name: getattr(manifest, name) for name in OFFER_FIELDS}
        if self._offers.get(peer) == offer:
            return
        self._offers[peer] = offer
        body = held.model_dump_json().encode()
        for model in manifest.models:
            await self._host.publish(model_topic(model.model_hash), body)
        logger.info("passing on the manifest of %s (%d models)", peer, len(manifest.models))
