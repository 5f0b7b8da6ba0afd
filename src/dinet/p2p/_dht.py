"""Kademlia provider records keyed by model hash, and model-version records as DHT values
(py-libp2p's DHT, with its traps handled)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
from libp2p.abc import IHost, PeerInfo
from libp2p.kad_dht.common import QUERY_TIMEOUT
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.records.validator import Validator
from libp2p.tools.anyio_service import background_trio_service

from dinet.errors import ModelVersionsError
from dinet.wire.ids import ModelHash
from dinet.wire.versions import VERSIONS_NAMESPACE, ModelVersions, decode_versions, newest_record

logger = logging.getLogger(__name__)


def dht_key(model_hash: ModelHash) -> str:
    """The DHT key for a model: a sha256 multihash of the model hash, as hex."""
    return "1220" + hashlib.sha256(f"dinet-model:{model_hash}".encode()).hexdigest()


async def find_model_providers(dht: KadDHT, model_hash: ModelHash) -> list[PeerInfo]:
    """Peers that announced `model_hash` in the DHT, each once."""
    key = dht_key(model_hash)
    # py-libp2p answers from its local record store as soon as it holds any provider
    # for a key, so a client would never see providers that announced later.
    dht.provider_store.providers.pop(bytes.fromhex(key), None)
    unique: dict[str, PeerInfo] = {}
    for info in await dht.find_providers(key):  # it may list a provider several times
        unique.setdefault(info.peer_id.to_base58(), info)
    return list(unique.values())


class VersionsValidator(Validator):
    """What every DHT node checks before it stores or returns a model-version record: the
    publisher's signature, expiry and the key's binding to (publisher, model id); and
    which of two records to keep (the higher sequence)."""

    def validate(self, key: str, value: bytes) -> None:
        decode_versions(value, key)  # ModelVersionsError: py-libp2p refuses the record

    def select(self, key: str, values: list[bytes]) -> int:
        records: list[ModelVersions | None] = []
        for value in values:
            try:
                records.append(decode_versions(value, key))
            except ModelVersionsError:
                records.append(None)
        valid = [r for r in records if r is not None]
        if not valid:
            return 0
        best = valid[newest_record(valid)]
        return records.index(best)


async def put_versions(dht: KadDHT, key: str, value: bytes) -> int:
    """Store a model-version record here and at the peers closest to its key; how many
    peers took it. (py-libp2p's put_value keeps that count to itself.)"""
    decode_versions(value, key)
    key_bytes = key.encode()
    local = dht.value_store.get(key_bytes)
    if local is not None and local.value != value and _keep_first(key, local.value, value):
        raise ModelVersionsError("a newer model-version record is already stored for this model")
    dht.value_store.put(key_bytes, value)
    closest = await dht.peer_routing.find_closest_peers_network(key_bytes)
    took = 0

    async def store_at(peer: object) -> None:
        nonlocal took
        with trio.move_on_after(QUERY_TIMEOUT):
            if await dht.value_store._store_at_peer(peer, key_bytes, value):  # type: ignore[arg-type]
                took += 1

    async with trio.open_nursery() as nursery:
        for peer in closest:
            if peer != dht.local_peer_id:
                nursery.start_soon(store_at, peer)
    return took


async def get_versions(dht: KadDHT, key: str) -> bytes | None:
    """The newest valid model-version record under `key`, of the network's and this
    node's own, or None.

    py-libp2p answers from its local store whenever it holds a value for the key, so a
    node that looked once would never see a newer record: the local copy is set aside for
    the lookup, then kept only if it is newer than what the network says.
    """
    key_bytes = key.encode()
    local = dht.value_store.get(key_bytes)
    dht.value_store.remove(key_bytes)
    try:
        await dht.get_value(key)  # stores the network's best here when it finds one
    finally:
        network = dht.value_store.get(key_bytes)
        if local is not None and (network is None or _keep_first(key, local.value, network.value)):
            dht.value_store.put_record(key_bytes, local)
    best = dht.value_store.get(key_bytes)
    if best is None:
        return None
    try:
        decode_versions(best.value, key)
    except ModelVersionsError as exc:
        logger.debug("no valid model-version record under %s: %s", key, exc)
        return None
    return best.value


def _keep_first(key: str, first: bytes, second: bytes) -> bool:
    return VersionsValidator().select(key, [first, second]) == 0


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
    dht.set_namespace_validator(VERSIONS_NAMESPACE, VersionsValidator())
    async with background_trio_service(dht):
        yield dht
