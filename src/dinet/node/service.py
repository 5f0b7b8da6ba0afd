"""A dinet node: one engine, one libp2p host, announced and discoverable."""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import trio
from libp2p.abc import IHost, PeerInfo
from libp2p.custom_types import TProtocol
from libp2p.kad_dht.kad_dht import KadDHT
from libp2p.peer.id import ID

from dinet.config import NodeSettings
from dinet.errors import DinetError
from dinet.ledger import Ledger
from dinet.models.store import ModelStore
from dinet.node._serving import model_stage, whole_model
from dinet.node.chores import Chores
from dinet.node.chunks import ModelKeeper, prepare_model
from dinet.node.manifests import ManifestPublisher
from dinet.node.receipts import Accountant, Prices
from dinet.p2p.directory import PeerDirectory
from dinet.p2p.discovery import (
    dht_key,
    dial,
    fetch_manifests,
    mdns_discoveries,
    peer_info_from,
    running_dht,
)
from dinet.p2p.gossip import running_pubsub
from dinet.p2p.host import build_host, full_addrs, remember_addrs, running_host
from dinet.p2p.identity import CLIENT_IDENTITY, load_or_create_identity, peer_id_of
from dinet.p2p.liveness import LivenessWatch
from dinet.wire.ids import CHUNKS_PROTOCOL, MANIFEST_PROTOCOL
from dinet.wire.manifest import Manifest

logger = logging.getLogger(__name__)

NODE_FILE = "node.json"
REDISCOVER_S = 10.0
PULL_EVERY_S = 3.0
PULL_FANOUT = 3
LIVENESS_EVERY_S = 2.0
PROVIDE_EVERY_S = 60.0


@dataclass(frozen=True)
class NodeStarted:
    peer_id: str
    addrs: list[str]
    model_id: str
    model_hash: str
    engine: dict[str, object] = field(default_factory=dict)  # engine_state(): served, error, sandbox


async def serve_node(
    settings: NodeSettings,
    *,
    # trio-typing's stubs, which libp2p pulls in, hide trio's own TaskStatus from mypy.
    task_status: trio.TaskStatus[NodeStarted] = trio.TASK_STATUS_IGNORED,  # type: ignore[name-defined]
) -> None:
    """Run a node until cancelled. Reports NodeStarted once it is serving."""
    key_pair = load_or_create_identity(settings.home)
    peer_id = peer_id_of(key_pair)
    model, model_hash = await prepare_model(settings)  # imported into the store, or pulled from peers
    host = build_host(key_pair, enable_mdns=settings.mdns)
    directory = PeerDirectory(peer_id, lambda m: remember_addrs(host, m.peer_id, m.addrs))

    if settings.liar is not None:
        logger.warning("THIS NODE LIES (%s) while advertising %s: for tests of verification only",
                       settings.liar, model_hash)
    ledger = Ledger.in_home(settings.home)
    me = [peer_id]
    if (settings.home / CLIENT_IDENTITY).exists():  # this home's own questions earn its peers standing
        me.append(peer_id_of(load_or_create_identity(settings.home, CLIENT_IDENTITY)))
    accountant = Accountant(
        key_pair.private_key, peer_id, ledger, Prices(settings.prompt_price, settings.price), me,
        allowance=settings.free_allowance, priority=settings.priority,
    )
    serving_context = (
        model_stage(settings, model, model_hash, host)
        if settings.layers is not None
        else whole_model(settings, model, model_hash, accountant)
    )
    async with serving_context as serving:
        chores = Chores(serving.busy)
        keeper = ModelKeeper(ModelStore(settings.home), model_hash, settings.scrub_mb_s * 1e6, chores.lull)

        def describe() -> dict[str, object]:
            # Never offer damaged bytes, nor a model whose engine has given up.
            offered = serving.offer if keeper.healthy and serving.available() else None
            return {
                "region": settings.region,
                "addrs": tuple(full_addrs(host)[:16]),
                "models": (offered,) if offered is not None else (),
                "max_concurrent": settings.max_concurrent,
                "price_per_token": settings.price,
                "price_per_prompt_token": settings.prompt_price,
                **serving.figures(),
            }

        publisher = ManifestPublisher(key_pair, peer_id, directory, describe)
        for protocol, handle in serving.handlers.items():
            host.set_stream_handler(TProtocol(protocol), keeper.guard(handle))
        host.set_stream_handler(TProtocol(CHUNKS_PROTOCOL), keeper.server().handle)
        host.set_stream_handler(TProtocol(MANIFEST_PROTOCOL), publisher.handle_query)

        async with running_host(host, settings.listen), running_pubsub(host) as pubsub:
            async with running_dht(host, server=True) as dht, trio.open_nursery() as nursery:
                joiner = _Joiner(host, directory, dht, nursery)
                nursery.start_soon(publisher.broadcast, pubsub, settings.heartbeat_s)
                nursery.start_soon(publisher.follow, pubsub, joiner.meet)
                nursery.start_soon(_keep_bootstrapped, joiner, settings.bootstrap)
                nursery.start_soon(_keep_providing, dht, model_hash)
                nursery.start_soon(_pull_directories, joiner, chores)
                nursery.start_soon(keeper.keep_healthy, host, dht, directory)
                liveness = LivenessWatch(host, directory, interval=LIVENESS_EVERY_S, lull=chores.lull)
                nursery.start_soon(liveness.run)
                for task in serving.background:
                    nursery.start_soon(task)
                if settings.mdns:
                    nursery.start_soon(_follow_mdns, joiner)
                started = NodeStarted(
                    peer_id, full_addrs(host), model.model_id, model_hash, serving.state()
                )
                _write_node_file(settings, started)
                nursery.start_soon(_keep_node_file, settings, started, serving.state)
                logger.info("node %s serving %s on %s", peer_id, model.model_id, started.addrs)
                task_status.started(started)
                await trio.sleep_forever()


async def _keep_node_file(
    settings: NodeSettings, started: NodeStarted, engine_state: Callable[[], dict[str, object]]
) -> None:
    """Rewrite the node file when the engine's state changes (it gave up, it restarted)."""
    last = started.engine
    while True:
        await trio.sleep(1.0)
        state = engine_state()
        if state != last:
            _write_node_file(settings, replace(started, engine=state))
            last = state


class _Joiner:
    """Connects to peers as they are discovered, and learns the manifests they know."""

    def __init__(self, host: IHost, directory: PeerDirectory, dht: KadDHT, nursery: trio.Nursery):
        self.host = host
        self.directory = directory
        self._dht = dht
        self._nursery = nursery
        self._pending: set[str] = set()

    def meet(self, manifest: Manifest) -> None:
        if manifest.peer_id in self._pending or self.connected(manifest.peer_id):
            return
        infos = [peer_info_from(a) for a in manifest.addrs]
        if infos:
            self._nursery.start_soon(self.join, infos[0])

    def connected(self, peer_id: str) -> bool:
        return any(p.to_base58() == peer_id for p in self.host.get_connected_peers())

    async def join(self, info: PeerInfo) -> None:
        peer_id = info.peer_id.to_base58()
        self._pending.add(peer_id)
        try:
            await dial(self.host, info)
            await self.learn_from(peer_id)
        except DinetError as exc:
            logger.info("could not join %s: %s", peer_id, exc)
        finally:
            self._pending.discard(peer_id)

    async def learn_from(self, peer_id: str) -> None:
        await self._dht.routing_table.add_peer(ID.from_base58(peer_id))
        signed, _ = await fetch_manifests(self.host, peer_id)
        for manifest in self.directory.add_from(peer_id, signed):
            self.meet(manifest)


async def _keep_bootstrapped(joiner: _Joiner, bootstrap: list[str]) -> None:
    """Dial bootstrap peers until each answers, and again whenever one drops."""
    while bootstrap:
        for addr in bootstrap:
            info = peer_info_from(addr)
            if not joiner.connected(info.peer_id.to_base58()):
                await joiner.join(info)
        await trio.sleep(REDISCOVER_S)


async def _pull_directories(joiner: _Joiner, chores: Chores) -> None:
    """Ask a few known peers for the manifests they hold, every few seconds.

    Gossip alone may miss a peer (it drops messages under load and needs a mesh
    first); pulling from random peers makes every directory converge anyway.
    """
    while True:
        await trio.sleep(PULL_EVERY_S)
        await chores.lull()
        known = [m.peer_id for m in joiner.directory.manifests()]
        for peer_id in random.sample(known, min(PULL_FANOUT, len(known))):
            try:
                await joiner.learn_from(peer_id)
            except DinetError as exc:
                logger.debug("directory pull from %s failed: %s", peer_id, exc)


async def _follow_mdns(joiner: _Joiner) -> None:
    async with mdns_discoveries(joiner.host) as found:
        async for info in found:
            if not joiner.connected(info.peer_id.to_base58()):
                await joiner.join(info)


async def _keep_providing(dht: KadDHT, model_hash: str) -> None:
    """Announce the model in the DHT whenever the routing table changes, and
    periodically anyway: records expire and peers come and go."""
    announced_to, last = -1, 0.0
    while True:
        size = dht.get_routing_table_size()
        if size and (size != announced_to or trio.current_time() - last > PROVIDE_EVERY_S):
            try:
                stored = await dht.provide(dht_key(model_hash))
                announced_to, last = size, trio.current_time()
                logger.info("announced the model in the DHT (routing table: %d peers, ok=%s)", size, stored)
            except Exception as exc:  # the DHT raises assorted types when no peer answers
                logger.debug("DHT provide failed: %s", exc)
        await trio.sleep(1.0)


def _write_node_file(settings: NodeSettings, started: NodeStarted) -> None:
    path = settings.home / NODE_FILE
    record = {
        "peer_id": started.peer_id,
        "addrs": started.addrs,
        "model_id": started.model_id,
        "model_hash": started.model_hash,
        "pid": os.getpid(),
        "engine": started.engine,
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)
