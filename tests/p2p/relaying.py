"""Hosts for relay tests, on loopback: relays, "home" hosts that listen nowhere, dialers.

A home host here listens nowhere: like a host behind NAT, it can only dial out, so the
only way to reach it is a circuit through a relay it holds a reservation on. Hole
punching is off unless asked for (on loopback a punch always succeeds).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from dinet.p2p.host import PeerHost, open_host
from dinet.p2p.reach import ReachConfig
from dinet.p2p.relay import RelayPolicy
from dinet.p2p.streams import FramedStream, Handler, Stream
from dinet.wire.keys import SigningKey

ECHO = "/dinet-test/echo/1"
LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]


@asynccontextmanager
async def relay_host(policy: RelayPolicy | None = None) -> AsyncIterator[PeerHost]:
    """A public host that relays (its reachability set by hand: AutoNAT is not under test)."""
    config = ReachConfig(hole_punching=False, relay=policy or RelayPolicy())
    async with open_host(SigningKey.generate(), LOOPBACK, reach=config) as host:
        host.set_reachability("public", "set by the test")
        yield host


@asynccontextmanager
async def home_host(
    reservations: int = 1, *, hole_punching: bool = False, handlers: dict[str, Handler] | None = None
) -> AsyncIterator[PeerHost]:
    """A private host that listens nowhere and keeps `reservations` relays; it echoes on
    ECHO and serves `handlers`."""
    config = ReachConfig(hole_punching=hole_punching, reservations=reservations)
    async with open_host(SigningKey.generate(), [], reach=config) as host:
        host.set_reachability("private", "set by the test")
        for protocol, handler in {ECHO: echo, **(handlers or {})}.items():
            host.set_handler(protocol, handler)
        yield host


@asynccontextmanager
async def dialer(*, hole_punching: bool = False) -> AsyncIterator[PeerHost]:
    async with open_host(
        SigningKey.generate(), LOOPBACK, reach=ReachConfig(hole_punching=hole_punching)
    ) as host:
        yield host


async def echo(stream: Stream) -> None:
    framed = FramedStream(stream)
    while (payload := await framed.receive()) is not None:
        await framed.send_payload(payload)
    await framed.close()


async def until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.05)


def circuits(host: PeerHost) -> list[str]:
    return [a for a in host.advertised_addrs() if "/p2p-circuit" in a]


async def reserved_on(home: PeerHost, relay: PeerHost) -> list[str]:
    """Connect `home` to `relay` and wait for its reservation there; its circuit addresses."""
    await home.dial(relay.full_addrs()[0])
    await until(lambda: relay.peer_id in home.reachability().relays)
    return circuits(home)
