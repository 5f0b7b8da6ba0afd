"""Finding peers: bootstrap addresses, mDNS on the LAN, and Kademlia provider records."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import multiaddr
import trio
from libp2p.abc import IHost, PeerInfo
from libp2p.custom_types import TProtocol
from libp2p.discovery.events.peerDiscovery import peerDiscovery
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.tools.anyio_service import background_trio_service
from pydantic import ValidationError

from dinet.errors import ConfigError, MalformedMessage, PeerError, PeerUnreachable
from dinet.p2p.streams import FramedStream
from dinet.wire.framing import MAX_FRAME
from dinet.wire.ids import MANIFEST_PROTOCOL
from dinet.wire.manifest import ManifestList, ManifestQuery, SignedManifest

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


async def find_model_providers(dht: KadDHT, model_hash: str) -> list[PeerInfo]:
    """Peers that announced `model_hash` in the DHT, each once."""
    key = dht_key(model_hash)
    # py-libp2p answers from its local record store as soon as it holds any provider
    # for a key, so a client would never see providers that announced later.
    dht.provider_store.providers.pop(bytes.fromhex(key), None)
    unique: dict[str, PeerInfo] = {}
    for info in await dht.find_providers(key):  # it may list a provider several times
        unique.setdefault(info.peer_id.to_base58(), info)
    return list(unique.values())


@asynccontextmanager
async def running_dht(host: IHost, *, server: bool) -> AsyncIterator[KadDHT]:
    # Its per-subnet cap would keep all but a few peers of one LAN or one
    # machine out of the routing table; dinet meshes are often exactly that.
    dht = KadDHT(
        host,
        DHTMode.SERVER if server else DHTMode.CLIENT,
        enable_random_walk=False,
        max_peers_per_subnet=0,
    )
    async with background_trio_service(dht):
        yield dht


async def fetch_manifests(
    host: IHost, peer_id: str, *, include_known: bool = True, timeout: float = DIAL_TIMEOUT_S
) -> tuple[list[SignedManifest], float]:
    """Ask a connected peer for its signed manifest (and those it knows), with the round trip in ms.

    Nothing is verified here: the caller's directory does that.
    """
    start = time.perf_counter()
    try:
        with trio.fail_after(timeout):
            stream = await host.new_stream(ID.from_base58(peer_id), [TProtocol(MANIFEST_PROTOCOL)])
            framed = FramedStream(stream, MAX_FRAME)
            await framed.send(ManifestQuery(include_known=include_known))
            payload = await framed.receive()
            await framed.close()
    except trio.TooSlowError:
        raise PeerUnreachable(f"{peer_id} did not answer a manifest query in {timeout:g} s") from None
    except PeerError:
        raise
    except Exception as exc:  # stream opening raises assorted libp2p errors
        raise PeerUnreachable(f"manifest query to {peer_id} failed: {exc}") from None
    rtt_ms = (time.perf_counter() - start) * 1e3
    if payload is None:
        raise PeerError(f"{peer_id} closed the manifest stream without an answer")
    try:
        listing = ManifestList.model_validate_json(payload)
    except ValidationError as exc:
        raise MalformedMessage(f"bad manifest list from {peer_id}: {exc.errors()[0]['msg']}") from None
    return list(listing.manifests), rtt_ms
