"""Asking peers what they know: the manifest query (`/dinet/manifest/1`), and peers
announced over mDNS on the LAN."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
from libp2p.abc import PeerInfo
from libp2p.discovery.events.peerDiscovery import peerDiscovery
from pydantic import ValidationError

from dinet.errors import MalformedMessage, PeerError, PeerUnreachable, WireError
from dinet.p2p.host import DIAL_TIMEOUT_S, FoundPeer, PeerHost, found_peer
from dinet.p2p.streams import FramedStream
from dinet.wire.framing import MAX_FRAME
from dinet.wire.ids import MANIFEST_PROTOCOL, ModelHash, PeerId
from dinet.wire.manifest import ManifestList, ManifestQuery, SignedManifest

logger = logging.getLogger(__name__)


async def fetch_manifests(
    host: PeerHost,
    peer_id: PeerId,
    *,
    include_known: bool = True,
    model_id: str | None = None,
    model_hash: ModelHash | None = None,
    timeout: float = DIAL_TIMEOUT_S,
) -> tuple[list[SignedManifest], float]:
    """Ask a connected peer for its signed manifest (and those it knows, of peers serving
    the model if one is named), with the round trip in ms.

    Nothing is verified here: the caller's directory does that. The round trip is noted
    on the host (`PeerHost.note_rtt`).
    """
    start = time.perf_counter()
    try:
        with trio.fail_after(timeout):
            framed = FramedStream(await host.open_stream(peer_id, MANIFEST_PROTOCOL, timeout), MAX_FRAME)
            query = ManifestQuery(include_known=include_known, model_id=model_id, model_hash=model_hash)
            await framed.send(query)
            payload = await framed.receive()
            await framed.close()
    except trio.TooSlowError:
        raise PeerUnreachable(f"{peer_id} did not answer a manifest query in {timeout:g} s") from None
    except WireError as exc:  # a frame past the cap, or not a frame at all
        raise PeerUnreachable(f"manifest query to {peer_id} failed: {exc}") from None
    rtt_ms = (time.perf_counter() - start) * 1e3
    if payload is None:
        raise PeerError(f"{peer_id} closed the manifest stream without an answer")
    try:
        listing = ManifestList.model_validate_json(payload)
    except ValidationError as exc:
        raise MalformedMessage(f"bad manifest list from {peer_id}: {exc.errors()[0]['msg']}") from None
    host.note_rtt(peer_id, rtt_ms)
    return list(listing.manifests), rtt_ms


@asynccontextmanager
async def mdns_discoveries(host: PeerHost) -> AsyncIterator[trio.MemoryReceiveChannel[FoundPeer]]:
    """Peers announced over mDNS (the host must be built with mDNS on).

    zeroconf calls back from its own thread: hand each peer to trio through the token.
    """
    send, receive = trio.open_memory_channel[FoundPeer](64)
    token = trio.lowlevel.current_trio_token()

    def on_peer(info: PeerInfo) -> None:
        if info.peer_id.to_base58() != host.peer_id:
            try:
                token.run_sync_soon(_offer, send, found_peer(info))
            except trio.RunFinishedError:
                pass  # trio is gone; nobody is listening any more

    peerDiscovery.register_peer_discovered_handler(on_peer)
    try:
        yield receive
    finally:
        peerDiscovery.unregister_peer_discovered_handler(on_peer)


def _offer(send: trio.MemorySendChannel[FoundPeer], peer: FoundPeer) -> None:
    try:
        send.send_nowait(peer)
    except (trio.WouldBlock, trio.ClosedResourceError):
        logger.debug("mDNS: dropped a discovery of %s (queue full or closed)", peer.peer_id)
