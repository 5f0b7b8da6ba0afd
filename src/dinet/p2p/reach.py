"""What a host knows of its own reachability, and how it reaches peers and lets them reach it.

The verdict on reachability (`dinet.p2p.reachability`, found by AutoNAT's dial-backs)
comes from outside this module; `running_reach` acts on it: a public host relays for
others (HOP, within `RelayPolicy`), a host that is not public keeps reservations on relays
among its peers (`dinet.p2p.relay`), and every host upgrades relayed connections by hole
punching (`dinet.p2p.holepunch`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio
from libp2p.tools.anyio_service import background_trio_service

from dinet.p2p._relay_fixes import BoundedRelay
from dinet.p2p.holepunch import HolePuncher
from dinet.p2p.relay import RelayPolicy, ReservationKeeper

if TYPE_CHECKING:
    from dinet.p2p.host import PeerHost


@dataclass(frozen=True)
class ReachConfig:
    """How a host deals with NAT.

    `relay`: offer a relay service while the host is public or listens on a WebSocket
    address, for browser tabs (None: never relay).
    `reservations`: relays to keep a reservation on while it is not public (0: none,
    as for clients, which only dial out). `hole_punching`: upgrade relayed connections
    to direct ones (DCUtR).
    """

    hole_punching: bool = True
    relay: RelayPolicy | None = None
    reservations: int = 0


class Reach:
    """The running parts of a host's reach: the relay protocol (STOP always, HOP while
    public or serving browsers), the reservations it keeps, the hole puncher."""

    def __init__(self, relay: BoundedRelay, keeper: ReservationKeeper, puncher: HolePuncher | None) -> None:
        self.relay = relay
        self.keeper = keeper
        self.puncher = puncher

    def counters(self) -> dict[str, int]:
        punched = self.puncher.counters if self.puncher is not None else {}
        return {
            "punch_attempts": punched.get("attempts", 0),
            "punch_successes": punched.get("successes", 0),
            "reservations_held": len(self.keeper.held),
            "reservations_made": self.keeper.made,
            "circuits_relayed": self.relay.counters["circuits"],
            "circuits_active": self.relay.circuits_open(),
            "circuits_cut": self.relay.counters["cut"],
            "relayed_bytes": self.relay.counters["bytes"],
            "reservations_granted": self.relay.counters["reservations"],
            "reservations_hosted": self.relay.reservations(),
        }


@asynccontextmanager
async def running_reach(host: PeerHost, config: ReachConfig) -> AsyncIterator[Reach]:
    """Run the relay protocol, the reservation keeper and the hole puncher for `host`."""
    policy = config.relay or RelayPolicy()
    relay = BoundedRelay(host.raw, policy)
    keeper = ReservationKeeper(host, config.reservations)
    puncher = HolePuncher(host.raw) if config.hole_punching else None
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(background_trio_service(relay))
        if puncher is not None:
            await stack.enter_async_context(background_trio_service(puncher))
        reach = Reach(relay, keeper, puncher)
        async with trio.open_nursery() as nursery:
            if config.relay is not None:
                nursery.start_soon(_relay_while_public, host, relay)
            nursery.start_soon(keeper.run)
            nursery.start_soon(_announce_new_circuits, host, keeper)
            try:
                yield reach
            finally:
                nursery.cancel_scope.cancel()


async def _relay_while_public(host: PeerHost, relay: BoundedRelay) -> None:
    """Serve HOP exactly while the host's verdict is public, or while it listens on a
    WebSocket address: browser tabs only dial out, and the node a tab dialed is its only
    way in, public or not (forever)."""
    while True:
        serve = host.reachability().state == "public" or bool(host.browser_addrs())
        if serve != relay.serving_hop:
            relay.serve_hop(serve)
            await host.tell_peers_what_changed()  # peers look for relays among those that speak HOP
        await host.reachability_changed()


async def _announce_new_circuits(host: PeerHost, keeper: ReservationKeeper) -> None:
    """Tell connected peers (identify push) whenever the relays, so the circuit addresses,
    change: manifests and DHT records follow on their own schedules (forever)."""
    while True:
        await keeper.changed()
        await host.tell_peers_what_changed()
