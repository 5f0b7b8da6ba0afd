"""Kademlia provider records keyed by model hash, and model-version records as DHT values
(py-libp2p's DHT, with its traps handled)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
from libp2p.abc import IHost, PeerInfo
from libp2p.kad_dht import kad_dht as kad_dht_module
from libp2p.kad_dht import peer_routing, provider_store
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.kad_dht.pb.kademlia_pb2 import Record
from libp2p.peer.id import ID
from libp2p.records.validator import Validator
from libp2p.tools.anyio_service import background_trio_service

from dinet.errors import ModelVersionsError
from dinet.wire.ids import ModelHash
from dinet.wire.versions import VERSIONS_NAMESPACE, ModelVersions, decode_versions, newest_record

logger = logging.getLogger(__name__)


# py-libp2p waits 10 s for each DHT query; under churn a departed peer among the nearest
# holds a lookup that long (bench/simulate.py: p95 ~10 s at every size). A live peer
# answers within a few round trips, even across continents and through a relay.
QUERY_TIMEOUT_S = 3.0
for _module in (kad_dht_module, peer_routing, provider_store):
    _module.QUERY_TIMEOUT = QUERY_TIMEOUT_S  # type: ignore[attr-defined]


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

    async def store_at(peer: ID) -> None:
        nonlocal took
        with trio.move_on_after(QUERY_TIMEOUT_S):
            if await dht.value_store._store_at_peer(peer, key_bytes, value):
                took += 1

    async with trio.open_nursery() as nursery:
        for peer in closest:
            if peer != dht.local_peer_id:
                nursery.start_soon(store_at, peer)
    return took


async def get_versions(dht: KadDHT, key: str) -> bytes | None:
    """The newest valid model-version record under `key`, of what the peers closest to
    the key hold and this node's own store, or None. The winner is kept here, and given
    to the closest peers that lack it or hold an older one.

    Not py-libp2p's get_value: it answers from the local store whenever that holds a
    value (so a node that looked once would never see a newer record), and it overwrites
    the local store with what the lookup found, even a newer record that a PUT_VALUE
    brought in the meantime.
    """
    key_bytes = key.encode()
    found_peers = await dht.peer_routing.find_closest_peers_network(key_bytes)
    closest = [p for p in found_peers if p != dht.local_peer_id]
    answers: dict[ID, Record | None] = {}

    async def ask(peer: ID) -> None:
        with trio.move_on_after(QUERY_TIMEOUT_S):
            found = await dht.value_store._get_from_peer(peer, key_bytes, return_record=True)
            answers[peer] = found if isinstance(found, Record) and _valid(key, found.value) else None

    async with trio.open_nursery() as nursery:
        for peer in closest:
            nursery.start_soon(ask, peer)
    local = dht.value_store.get(key_bytes)  # read now: a PUT may have come during the lookup
    held = [r for r in (*answers.values(), local) if r is not None and _valid(key, r.value)]
    if not held:
        return None
    best = held[VersionsValidator().select(key, [r.value for r in held])]
    if local is None or local.value != best.value:
        dht.value_store.put_record(key_bytes, best)
    stale = [p for p, r in answers.items() if r is None or r.value != best.value]
    async with trio.open_nursery() as nursery:
        for peer in stale:  # they keep what wins against theirs (their validator's select)
            nursery.start_soon(_give, dht, peer, key_bytes, best)
    return best.value


async def _give(dht: KadDHT, peer: ID, key: bytes, record: Record) -> None:
    with trio.move_on_after(QUERY_TIMEOUT_S):
        await dht.value_store._store_at_peer(peer, key, record.value, record=record)


def _valid(key: str, value: bytes) -> bool:
    try:
        decode_versions(value, key)
    except ModelVersionsError as exc:
        logger.debug("ignoring a model-version record: %s", exc)
        return False
    return True


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
