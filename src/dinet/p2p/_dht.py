"""Kademlia provider records keyed by model hash (py-libp2p's DHT, with its traps handled)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from libp2p.abc import IHost, PeerInfo
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.tools.anyio_service import background_trio_service

from dinet.wire.ids import ModelHash


def dht_key(model_hash: ModelHash) -> str:
    """The DHT key for a model: a sha256 multihash of the model hash, as hex."""
    return "1220" + hashlib.sha256(f"dinet-model:{model_hash}".encode()).hexdigest()


def model_id_key(model_id: str) -> str:
    """The DHT key for every version of a model id (peers serving any of its versions)."""
    return "1220" + hashlib.sha256(f"dinet-model-id:{model_id}".encode()).hexdigest()


async def find_model_providers(dht: KadDHT, key: str) -> list[PeerInfo]:
    """Peers that announced the key (`dht_key`, `model_id_key`) in the DHT, each once."""
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
