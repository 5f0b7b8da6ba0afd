"""Peer addresses as an operator writes them: checked, and DNS names resolved.

A bootstrap address is a peer's full multiaddr (`/ip4/…/tcp/…/p2p/<peer id>`), the
same with a host name (`/dns4/host/…`, `/dns6/…`, `/dns/…`), or `/dnsaddr/<domain>`,
whose TXT records at `_dnsaddr.<domain>` each hold one address (`dnsaddr=/ip4/…/p2p/<id>`;
a `/dnsaddr/<domain>/p2p/<id>` keeps only the records of that peer). Only the TCP
addresses of the results are kept: the only transport dinet dials.

Host names are resolved by the system (`getaddrinfo`, so `/etc/hosts` counts, as for
every other program); TXT records by dnspython, which reads `/etc/resolv.conf`.
py-libp2p would resolve `/dns4` on dial itself, but through dnspython alone (so not
`localhost`), silently dialing the name unresolved when it finds nothing.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable

import dns.asyncresolver
import dns.resolver
import multiaddr
import trio

from dinet.errors import ConfigError, PeerUnreachable
from dinet.wire.ids import PeerId

logger = logging.getLogger(__name__)

RESOLVE_TIMEOUT_S = 5.0  # one bootstrap address, every lookup it needs included
MAX_DNSADDR_DEPTH = 4  # dnsaddr records that name other dnsaddr domains
DNSADDR_PREFIX = "dnsaddr="

_HOST_NAMES = {"dns": socket.AF_UNSPEC, "dns4": socket.AF_INET, "dns6": socket.AF_INET6}
_IP_NAMES = {socket.AF_INET: "ip4", socket.AF_INET6: "ip6"}

TxtLookup = Callable[[str], Awaitable[list[str]]]  # a domain -> the texts of its TXT records


def check_peer_addr(text: str) -> str:
    """`text` if it can name a peer to join: a multiaddr ending in /p2p/<peer id>, or a
    /dnsaddr/ domain (its records name the peers); ConfigError otherwise."""
    try:
        addr = multiaddr.Multiaddr(text)
    except Exception as exc:  # the multiaddr package raises several unrelated types
        raise ConfigError(f"not a multiaddr: {text!r} ({exc})") from None
    names = [p.name for p in addr.protocols()]
    if names[:1] != ["dnsaddr"] and names[-1:] != ["p2p"]:
        raise ConfigError(f"not a peer multiaddr (…/p2p/<peer id>, or /dnsaddr/<domain>): {text!r}")
    return text


def peer_named(text: str) -> PeerId | None:
    """The peer id a checked address ends in; None for a bare /dnsaddr/<domain>."""
    peer = multiaddr.Multiaddr(text).get_peer_id()
    return None if peer is None else PeerId(peer)


def is_dns(text: str) -> bool:
    return text.split("/")[1:2] in (["dns"], ["dns4"], ["dns6"], ["dnsaddr"])


async def resolve_addr(text: str, *, txt: TxtLookup | None = None) -> list[str]:
    """The dialable addresses (…/tcp/<port>/p2p/<peer id>) a checked peer address stands
    for: itself if it names no host, else what its names resolve to (`txt` looks up TXT
    records; default: the system's DNS servers). PeerUnreachable if nothing resolves."""
    if not is_dns(text):
        return [text]
    try:
        with trio.fail_after(RESOLVE_TIMEOUT_S):
            found = await _expand(text, txt or system_txt, MAX_DNSADDR_DEPTH)
    except trio.TooSlowError:
        raise PeerUnreachable(f"cannot resolve {text}: no answer in {RESOLVE_TIMEOUT_S:g} s") from None
    usable = [a for a in dict.fromkeys(found) if _dialable(a)]
    if not usable:
        shown = f" (only {', '.join(found)})" if found else ""
        raise PeerUnreachable(f"{text} resolves to no TCP address of a peer{shown}")
    return usable


async def _expand(text: str, txt: TxtLookup, depth: int) -> list[str]:
    addr = multiaddr.Multiaddr(text)
    first = next(iter(addr.protocols())).name
    name = addr.value_for_protocol(first)
    if first in _HOST_NAMES:
        rest = "".join(f"/{part}" for part in text.split("/", 3)[3:])  # what follows /dns4/<name>
        return [f"/{ip}{rest}" for ip in await _host_addresses(name, _HOST_NAMES[first])]
    if first != "dnsaddr":
        return [text]
    if depth == 0:
        raise PeerUnreachable(f"cannot resolve {text}: dnsaddr records nested too deep")
    wanted = addr.get_peer_id()
    found: list[str] = []
    for record in await _txt(txt, f"_dnsaddr.{name}"):
        if not record.startswith(DNSADDR_PREFIX):
            continue
        listed = record.removeprefix(DNSADDR_PREFIX).strip()
        try:
            peer = multiaddr.Multiaddr(listed).get_peer_id()
        except Exception:  # a record is anyone's text: skip what is no multiaddr
            logger.debug("_dnsaddr.%s: %r is no multiaddr, skipped", name, listed)
            continue
        if peer is None or (wanted is not None and peer != wanted):
            continue
        try:
            found += await _expand(listed, txt, depth - 1)
        except PeerUnreachable as exc:  # one broken record leaves the others usable
            logger.debug("%s", exc)
    return found


async def _host_addresses(name: str, family: int) -> list[str]:
    """`ip4/<address>` and `ip6/<address>` of a host name, as the system resolves it."""
    try:
        infos = await trio.socket.getaddrinfo(name, None, family=family, type=socket.SOCK_STREAM)
    except OSError as exc:  # socket.gaierror: unknown name, no network ...
        raise PeerUnreachable(f"cannot resolve {name!r}: {exc.strerror or exc}") from None
    return list(dict.fromkeys(f"{_IP_NAMES[info[0]]}/{info[4][0]}" for info in infos if info[0] in _IP_NAMES))


async def _txt(lookup: TxtLookup, domain: str) -> list[str]:
    try:
        return await lookup(domain)
    except PeerUnreachable:
        raise
    except Exception as exc:  # dnspython raises a type per DNS outcome (NXDOMAIN, NoAnswer, ...)
        raise PeerUnreachable(f"cannot look up TXT records of {domain}: {exc}") from None


async def system_txt(domain: str) -> list[str]:
    """The TXT records of `domain`, asked of the DNS servers in /etc/resolv.conf."""
    return await txt_records(dns.asyncresolver.Resolver(), domain)


def txt_from(server: str, port: int = 53) -> TxtLookup:
    """TXT lookups asked of one DNS server (a private zone, a test's own server)."""
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [server]
    resolver.port = port

    async def lookup(domain: str) -> list[str]:
        return await txt_records(resolver, domain)

    return lookup


async def txt_records(resolver: dns.asyncresolver.Resolver, domain: str) -> list[str]:
    """Each TXT record's text: its character strings joined, as RFC 7208 reads them."""
    try:
        answer = await resolver.resolve(domain, "TXT", lifetime=RESOLVE_TIMEOUT_S)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    return [b"".join(record.strings).decode("utf-8", "replace") for record in answer]


def _dialable(text: str) -> bool:
    """An address over TCP, straight or through a relay: ip4|ip6 / tcp / p2p (/p2p-circuit/p2p)."""
    try:
        names = [p.name for p in multiaddr.Multiaddr(text).protocols()]
    except Exception:  # e.g. an IPv6 address with a zone (fe80::1%eth0) from the resolver
        return False
    return (
        names[:1] in (["ip4"], ["ip6"]) and names[1:2] == ["tcp"] and set(names[2:]) <= {"p2p", "p2p-circuit"}
    )
