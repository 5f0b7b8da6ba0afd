"""The libp2p host every dinet process runs: TCP, Noise only, yamux only."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import multiaddr
from libp2p import create_yamux_muxer_option, new_host
from libp2p.abc import IHost
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_key_pair
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.utils.address_validation import expand_wildcard_address

from dinet.errors import ConfigError
from dinet.p2p._yamux import keep_frames_whole

logger = logging.getLogger(__name__)

# py-libp2p keeps a slot per inbound connection for the host's whole life and
# refuses new ones past max_connections: set it far beyond any real lifetime.
_MAX_CONNECTIONS = 1_000_000
_ADDR_TTL_S = 600


def build_host(key_pair: KeyPair, *, enable_mdns: bool = False) -> IHost:
    """A host that only speaks Noise (the library's default also accepts plaintext)."""
    # py-libp2p's yamux sends a WINDOW_UPDATE frame after every read unless this is off
    # (it reads the variable at each read; a user's own setting wins). Off, its own
    # hysteresis decides: on a chain's 2.4 KB messages one update per two reads (counted),
    # and a 3-stage chain's hop took 0.95 ms instead of 1.08 (medians of ~550 tokens,
    # alternated runs). Pulling a model over loopback ran at the same speed.
    os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")
    keep_frames_whole()  # else a cancelled send can break the whole connection (see _yamux)
    security = {
        NOISE_PROTOCOL_ID: NoiseTransport(key_pair, noise_privkey=new_x25519_key_pair().private_key)
    }
    config = ConnectionConfig(
        max_connections=_MAX_CONNECTIONS,
        high_watermark=_MAX_CONNECTIONS,
        low_watermark=0,
        min_connections=0,
        # connect() waits a fixed 250 ms for extra connections unless this is 1.
        max_connections_per_peer=1,
    )
    return new_host(
        key_pair=key_pair,
        sec_opt=security,
        muxer_opt=create_yamux_muxer_option(),
        connection_config=config,
        enable_mDNS=enable_mdns,
    )


def parse_multiaddrs(addrs: Sequence[str]) -> list[multiaddr.Multiaddr]:
    parsed = []
    for text in addrs:
        try:
            parsed.append(multiaddr.Multiaddr(text))
        except Exception as exc:  # the multiaddr package raises several unrelated types
            raise ConfigError(f"not a multiaddr: {text!r} ({exc})") from None
    return parsed


@asynccontextmanager
async def running_host(host: IHost, listen: Sequence[str]) -> AsyncIterator[IHost]:
    async with host.run(parse_multiaddrs(listen)):
        yield host


def full_addrs(host: IHost) -> list[str]:
    """Dialable addresses, each ending in /p2p/<peer id>; a wildcard listen
    address is expanded to loopback and every interface."""
    peer = host.get_id().to_base58()
    out: list[str] = []
    for addr in host.get_addrs():
        base = str(addr).split("/p2p/")[0]
        if base.startswith("/ip4/0.0.0.0/"):
            rest = base.removeprefix("/ip4/0.0.0.0")
            concrete = [f"/ip4/127.0.0.1{rest}"]
            concrete += [str(a) for a in expand_wildcard_address(multiaddr.Multiaddr(base))]
        else:
            concrete = [base]
        out += [f"{c}/p2p/{peer}" for c in concrete if f"{c}/p2p/{peer}" not in out]
    return out


def known_addrs(host: IHost, peer_id: str) -> list[str]:
    """The addresses libp2p holds for a peer; none if it has never heard of it."""
    try:
        return [str(addr) for addr in host.get_peerstore().addrs(ID.from_base58(peer_id))]
    except Exception:  # py-libp2p raises when the peer is unknown
        return []


def remember_addrs(host: IHost, peer_id: str, addrs: Sequence[str]) -> None:
    """Tell libp2p where a peer is now, and forget that dials to it failed before.

    A restarted peer comes back on a new port; py-libp2p would otherwise keep
    dialing its old addresses and refuse to dial it at all for 60 s after a failure.
    """
    target = ID.from_base58(peer_id)
    bare = [multiaddr.Multiaddr(a.split("/p2p/")[0]) for a in addrs]
    peerstore = host.get_peerstore()
    peerstore.clear_addrs(target)  # its old ports are dead: dialing them only wastes time
    peerstore.add_addrs(target, bare, _ADDR_TTL_S)
    failed_dials = getattr(host.get_network(), "_negative_peer_cache", None)
    if failed_dials is not None:
        failed_dials.evict(str(target))
