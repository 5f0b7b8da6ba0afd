"""Hole punching (DCUtR): py-libp2p 0.8.1's, counted, with two of its habits changed.

The library's protocol upgrades a relayed connection to a direct one by itself, about two
seconds after the relayed connection opens (it punched 17 times out of 17 across the lab's
two NATs). Changed here:

- Before punching it dials the peer's known direct addresses for up to 10 s. A peer behind
  NAT advertises LAN addresses that time out from outside, and dinet's own dial has just
  tried them: here that dial gets `UNILATERAL_S`, and never a wildcard address.
- Its punch dials bind the first listen address the host advertises. dinet advertises
  concrete addresses (loopback among them), so the dials bind the wildcard the host
  listens on instead, with the same port (what the NAT maps, and what was measured).
- A minute after a punch it closed the relayed connection, streams and all: an answer
  still streaming over the relay broke. Here the relayed connection is closed once its
  last dinet stream has ended (new streams take the direct connection meanwhile; the
  library's own long-lived streams, gossip's, are opened again there).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import multiaddr
import trio
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.dcutr import RELAY_CLOSE_GRACE_PERIOD, DCUtRProtocol

logger = logging.getLogger(__name__)

UNILATERAL_S = 1.5  # a plain direct dial before punching gets this long
RELAYED_STREAMS_S = 600.0  # streams left on a relayed connection after a punch get this long
_WILDCARDS = ("/ip4/0.0.0.0/", "/ip6/::/")


class HolePuncher(DCUtRProtocol):
    """DCUtR with `counters`: attempts (punches begun) and successes (direct connection made)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.counters: Counter[str] = Counter()

    async def _perform_hole_punch(
        self, peer_id: ID, addrs: list[multiaddr.Multiaddr], as_responder: bool = False
    ) -> bool:
        self.counters["attempts"] += 1
        ok = await super()._perform_hole_punch(peer_id, addrs, as_responder)
        if ok:
            self.counters["successes"] += 1
        logger.info("hole punch to %s: %s", peer_id, "direct now" if ok else "failed, staying relayed")
        return ok

    async def _try_unilateral_upgrade(self, peer_id: ID) -> bool:
        try:
            addrs = [
                a
                for a in self.host.get_peerstore().addrs(peer_id)
                if "/p2p-circuit" not in str(a) and not str(a).startswith(_WILDCARDS)
            ]
        except Exception:  # the peerstore raises when it does not know the peer
            return False
        if not addrs:
            return False
        with trio.move_on_after(UNILATERAL_S):
            async with trio.open_nursery() as nursery:
                for addr in addrs:
                    nursery.start_soon(self._dial_peer, peer_id, addr)
        return await self._verify_direct_connection(peer_id)

    async def _dial_peer(
        self,
        peer_id: ID,
        addr: multiaddr.Multiaddr,
        source: tuple[str, int] | None = None,
        as_responder: bool = False,
    ) -> None:
        if source is not None:
            source = (self._listen_ip(source[1]), source[1])
        await super()._dial_peer(peer_id, addr, source, as_responder)

    async def _close_relayed_conns_after_grace(
        self, peer_id: ID, grace: float = RELAY_CLOSE_GRACE_PERIOD
    ) -> None:
        await trio.sleep(grace)
        with trio.move_on_after(RELAYED_STREAMS_S):
            while self._relayed_streams(peer_id):  # noqa: ASYNC110 (streams end without an event)
                await trio.sleep(1.0)
        await super()._close_relayed_conns_after_grace(peer_id, grace=0)

    def _relayed_streams(self, peer_id: ID) -> int:
        """dinet's streams still open on relayed connections to `peer_id`."""
        conns = self.host.get_network().get_connections(peer_id)
        relayed = [c for c in conns if any("/p2p-circuit" in str(a) for a in c.get_transport_addresses())]
        return sum(1 for c in relayed for s in c.get_streams() if str(s.get_protocol()).startswith("/dinet/"))

    def _listen_ip(self, port: int) -> str:
        """The IP the host listens on at `port` (a wildcard, usually)."""
        for addr in self.host.get_transport_addrs():
            if addr.value_for_protocol("tcp") == str(port):
                for proto in ("ip4", "ip6"):
                    try:
                        return str(addr.value_for_protocol(proto))
                    except Exception:  # not this family
                        continue
        return "0.0.0.0"
