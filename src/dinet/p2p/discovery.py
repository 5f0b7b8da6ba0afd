"""Finding peers: bootstrap addresses, mDNS on the LAN, and Kademlia provider records."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import multiaddr
import trio
from libp2p.abc import IHost, PeerInfo
from libp2p.discovery.events.peerDiscovery import peerDiscovery
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.tools.anyio_service import background_trio_service

from dinet.errors import ConfigError, PeerUnreachable

logger = logging.getLogger(__name__)

DIAL_TIMEOUT_S = 5.0


def peer_info_from(addr: str) -> PeerInfo:
    try:
        return info_from_p2p_addr(multiaddr.Multiaddr(addr))
    except Exception as exc:  # the multiaddr parser raises assorted types
        raise ConfigError(f"not a peer multiaddr (…/p2p/<peer id>): {addr!r} ({exc})") from None


async def dial(host: IHost, info: PeerInfo, timeout: float = DIAL_TIMEOUT_S) -> None:
    """Connect to a peer, or PeerUnreachable."""
    try:
        with trio.fail_after(timeout):
            await host.connect(info)
    except trio.TooSlowError:
        raise PeerUnreachable(f"no answer from {info.peer_id} within {timeout:g} s") from None
    except Exception as exc:  # libp2p raises many unrelated types when a dial fails
        raise PeerUnreachable(f"cannot reach {info.peer_id}: {exc}") from None


async def dial_any(host: IHost, addrs: Sequence[str]) -> list[str]:
    """Dial every bootstrap address at once; the peer ids that answered."""
    infos = [peer_info_from(a) for a in addrs]
    reached: list[str] = []

    async def one(info: PeerInfo) -> None:
        try:
            await dial(host, info)
            reached.append(info.peer_id.to_base58())
        except PeerUnreachable as exc:
            logger.info("bootstrap: %s", exc)

    async with trio.open_nursery() as nursery:
        for info in infos:
            nursery.start_soon(one, info)
    return reached


@asynccontextmanager
async def mdns_discoveries(host: IHost) -> AsyncIterator[trio.MemoryReceiveChannel[PeerInfo]]:
    """Peers announced over mDNS (the host must be built with mDNS on).

    zeroconf calls back from its own thread: hand each peer to trio through the token.
    """
    send, receive = trio.open_memory_channel[PeerInfo](64)
    token = trio.lowlevel.current_trio_token()
    own = host.get_id()

    def on_peer(info: PeerInfo) -> None:
        if info.peer_id != own:
            try:
                token.run_sync_soon(_offer, send, info)
            except trio.RunFinishedError:
                pass  # trio is gone; nobody is listening any more

    peerDiscovery.register_peer_discovered_handler(on_peer)
    try:
        yield receive
    finally:
        peerDiscovery.unregister_peer_discovered_handler(on_peer)


def _offer(send: trio.MemorySendChannel[PeerInfo], info: PeerInfo) -> None:
    try:
        send.send_nowait(info)
    except (trio.WouldBlock, trio.ClosedResourceError):
        logger.debug("mDNS: dropped a discovery of %s (queue full or closed)", info.peer_id)


def dht_key(model_hash: str) -> str:
    """The DHT key for a model: a sha256 multihash of the model hash, as hex."""
    return "1220" + hashlib.sha256(f"dinet-model:{model_hash}".encode()).hexdigest()


@asynccontextmanager
async def running_dht(host: IHost, *, server: bool) -> AsyncIterator[KadDHT]:
    dht = KadDHT(host, DHTMode.SERVER if server else DHTMode.CLIENT, enable_random_walk=False)
    async with background_trio_service(dht):
        yield dht


async def add_to_routing_table(dht: KadDHT, peer_ids: Callable[[], Sequence[object]]) -> None:
    for peer_id in peer_ids():
        await dht.routing_table.add_peer(peer_id)
