"""Choosing verifiers apart from the producer and from each other: pure, no I/O.

    order = apart_first(ranked, place_of_peer, taken=[producer_place, first_verifier_place])

Peers run by the same hands tend to sit together: one data centre, one home line, one
cloud region. A peer's `Place` is what it shares with such neighbours: its address
prefixes (the /24 of an IPv4 address, the /48 of an IPv6 one, from the addresses it
advertises; relayed addresses say where its relay is, not where it is, and count for
nothing) and the region its manifest names. A verifier is taken first among the
candidates that share no prefix with any place already taken (the producers' and the
other verifiers'), then among those that at least share no region, and only then among
the rest: with nobody apart, any capable peer still checks. Within each tier the
caller's order (routing's) stands.

A Sybil can claim any region and may rent addresses far apart, so this is no proof of
independence; it makes a colluder's help cost more, and the majority of several
verifiers (`dinet.client.verify`) does the rest.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

IPV4_PREFIX = 24
IPV6_PREFIX = 48


@dataclass(frozen=True)
class Place:
    """Where a peer sits, as far as anyone can tell: address prefixes and region."""

    prefixes: frozenset[str] = frozenset()
    region: str = ""


def address_prefix(multiaddr: str) -> str | None:
    """The network prefix of a multiaddr's IP address ("203.0.113.0/24"); None for a
    relayed address, a DNS name, an unspecified address or anything unreadable."""
    parts = multiaddr.split("/")
    if "p2p-circuit" in parts or len(parts) < 3 or parts[1] not in ("ip4", "ip6"):
        return None
    try:
        address = ipaddress.ip_address(parts[2])
    except ValueError:
        return None
    if address.is_unspecified:
        return None
    bits = IPV4_PREFIX if address.version == 4 else IPV6_PREFIX
    return str(ipaddress.ip_network(f"{address}/{bits}", strict=False))


def place_of(addrs: Iterable[str], region: str = "") -> Place:
    prefixes = frozenset(p for p in (address_prefix(a) for a in addrs) if p is not None)
    return Place(prefixes, region)


def closeness(place: Place, taken: Sequence[Place]) -> tuple[bool, bool]:
    """(shares an address prefix with a place taken, shares its region): lower is farther."""
    near_address = any(place.prefixes & other.prefixes for other in taken)
    near_region = bool(place.region) and any(place.region == other.region for other in taken)
    return near_address, near_region


def apart_first(candidates: Sequence[T], place: Callable[[T], Place], taken: Sequence[Place]) -> list[T]:
    """`candidates` with those farthest from every place `taken` first; a stable order, so
    the caller's ranking decides within each tier."""
    return sorted(candidates, key=lambda c: closeness(place(c), taken))
