"""A dinet node: one libp2p host, announced and discoverable, serving one engine or none."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

import trio

from dinet.config import NodeSettings
from dinet.ledger import Ledger
from dinet.models.store import ModelStore
from dinet.node._serving import Serving, fake_model, model_stage, no_engine, whole_model
from dinet.node.chores import Chores
from dinet.node.chunks import ModelKeeper, prepare_model
from dinet.node.manifests import ManifestPublisher
from dinet.node.receipts import Accountant, Prices
from dinet.p2p.directory import PeerDirectory
from dinet.p2p.gate import peer_gate
from dinet.p2p.host import PeerHost, build_host
from dinet.p2p.identity import CLIENT_IDENTITY, load_or_create_identity
from dinet.p2p.joining import Joiner
from dinet.p2p.liveness import LivenessWatch
from dinet.p2p.reach import ReachConfig
from dinet.p2p.reachability import Reachability
from dinet.p2p.relay import RelayPolicy
from dinet.wire.ids import CHUNKS_PROTOCOL, MANIFEST_PROTOCOL, ModelHash, PeerId
from dinet.wire.keys import SigningKey

logger = logging.getLogger(__name__)

NODE_FILE = "node.json"
PULL_EVERY_S = 3.0
PULL_FANOUT = 3
LIVENESS_EVERY_S = 2.0
NODE_FILE_EVERY_S = 1.0


@dataclass(frozen=True)
class NodeStarted:
    peer_id: PeerId
    addrs: list[str]
    model_id: str | None  # None: the node serves no model (--no-model)
    model_hash: ModelHash | None
    engine: dict[str, object] | None  # engine_state(): served, error, sandbox; None: no model
    reachability: Reachability
    advertised: list[str]  # what peers are told to dial: confirmed addresses, relay circuits
    reach: dict[str, int]  # PeerHost.reach_counters(): hole punches, reservations, relaying
    # The same figures as they are now (addresses, engine and reachability change).
    live: Callable[[], NodeStarted] = field(compare=False, repr=False)

    def record(self) -> dict[str, object]:
        """What `din node --json` prints and the node file holds (with the pid)."""
        return {
            "peer_id": self.peer_id,
            "addrs": self.addrs,
            "model_id": self.model_id,
            "model_hash": self.model_hash,
            "engine": self.engine,
            "reachability": self.reachability.as_dict(),
            "advertised": self.advertised,
            "reach": self.reach,
        }


async def serve_node(
    settings: NodeSettings,
    *,
    # trio-typing's stubs, which libp2p pulls in, hide trio's own TaskStatus from mypy.
    task_status: trio.TaskStatus[NodeStarted] = trio.TASK_STATUS_IGNORED,  # type: ignore[name-defined]
) -> None:
    """Run a node until cancelled. Reports NodeStarted once it is serving."""
    key = load_or_create_identity(settings.home)
    host = build_host(
        key, enable_mdns=settings.mdns, gate=peer_gate(settings.swarm_key, settings.allow_peers)
    )
    if settings.no_model:
        serving = no_engine()
    elif settings.fake_engine:  # benchmarks only
        serving = fake_model(settings, _accountant(settings, key))
    else:
        serving = _model_served(settings, key, host)
    async with serving as served:
        await _run(settings, key, host, served, task_status)


@asynccontextmanager
async def _model_served(settings: NodeSettings, key: SigningKey, host: PeerHost) -> AsyncIterator[Serving]:
    """The node's model, imported or pulled from peers, served by its engine (or as a
    pipeline stage), its bytes kept healthy and shared with peers."""
    model, model_hash = await prepare_model(settings)
    if settings.liar is not None:
        logger.warning(
            "THIS NODE LIES (%s) while advertising %s: for tests of verification only",
            settings.liar,
            model_hash,
        )
    accountant = _accountant(settings, key)
    serving_context = (
        model_stage(settings, model, model_hash, host)
        if settings.layers is not None
        else whole_model(settings, model, model_hash, accountant)
    )
    async with serving_context as serving:
        lull = Chores(serving.busy).lull
        yield _kept(
            serving, ModelKeeper(ModelStore(settings.home), model_hash, settings.scrub_mb_s * 1e6, lull)
        )


def _accountant(settings: NodeSettings, key: SigningKey) -> Accountant:
    """Who signs this node's receipts and keeps its ledger."""
    me = [key.peer_id]
    if (settings.home / CLIENT_IDENTITY).exists():  # this home's own questions earn its peers standing
        me.append(load_or_create_identity(settings.home, CLIENT_IDENTITY).peer_id)
    return Accountant(
        key,
        key.peer_id,
        Ledger.in_home(settings.home),
        Prices(settings.prompt_price, settings.price),
        me,
        allowance=settings.free_allowance,
        priority=settings.priority,
    )


def _kept(serving: Serving, keeper: ModelKeeper) -> Serving:
    """`serving` with its model's bytes in the keeper's care: chunks served to peers,
    requests refused and the offer withdrawn while any chunk is damaged, repairs made,
    and the model announced in the DHT."""
    return replace(
        serving,
        handlers={
            **{protocol: keeper.guard(handle) for protocol, handle in serving.handlers.items()},
            CHUNKS_PROTOCOL: keeper.server().handle,
        },
        # Never offer damaged bytes, nor a model whose engine has given up.
        available=lambda: keeper.healthy and serving.available(),
        background=[
            *serving.background,
            keeper.keep_healthy,
            lambda joiner: joiner.keep_providing(keeper.model_hash),
        ],
    )


async def _run(
    settings: NodeSettings,
    key: SigningKey,
    host: PeerHost,
    serving: Serving,
    task_status: trio.TaskStatus[NodeStarted],  # type: ignore[name-defined]
) -> None:
    """What every node does, whatever it serves: listen, join, keep its directory and the
    DHT, pass manifests on, watch its peers, and say what it is in its node file."""
    peer_id = key.peer_id
    directory = PeerDirectory(peer_id, lambda m: host.remember_addrs(m.peer_id, m.addrs))
    chores = Chores(serving.busy)

    def describe() -> dict[str, object]:
        return {
            "region": settings.region,
            "addrs": tuple(host.advertised_addrs()[:16]),
            "models": (serving.offer,) if serving.offer is not None and serving.available() else (),
            "max_concurrent": settings.max_concurrent,
            "price_per_token": settings.price,
            "price_per_prompt_token": settings.prompt_price,
            "reach": host.reachability().state,
            **serving.figures(),
        }

    def now() -> NodeStarted:
        return NodeStarted(
            peer_id,
            host.full_addrs(),
            serving.model_id,
            serving.model_hash,
            serving.state(),
            host.reachability(),
            host.advertised_addrs(),
            host.reach_counters(),
            now,
        )

    publisher = ManifestPublisher(key, peer_id, directory, describe)
    for protocol, handle in serving.handlers.items():
        host.set_handler(protocol, handle)
    host.set_handler(MANIFEST_PROTOCOL, publisher.handle_query)

    running = host.running(
        settings.listen,
        dht="server",
        gossip=True,
        reach=reach_config(settings),
        check_reach=True,
        announce=settings.announce,
        upnp=settings.upnp,
    )
    async with running, trio.open_nursery() as nursery:
        joiner = Joiner(
            host,
            directory,
            meet_new_in=nursery,
            report_level=logging.INFO,
            dial_timeout_s=settings.dial_timeout_s,
        )
        nursery.start_soon(publisher.broadcast, host, settings.heartbeat_s)
        nursery.start_soon(publisher.follow, host, lambda m: joiner.meet_soon(m.peer_id, m.addrs))
        nursery.start_soon(joiner.keep_joined, settings.bootstrap)
        nursery.start_soon(joiner.pull_directories, PULL_EVERY_S, PULL_FANOUT, chores.lull)
        liveness = LivenessWatch(
            host,
            directory,
            interval=LIVENESS_EVERY_S,
            timeout=settings.probe_timeout_s,
            dial_timeout=settings.dial_timeout_s,
            lull=chores.lull,
        )
        nursery.start_soon(liveness.run)
        for task in serving.background:
            nursery.start_soon(task, joiner)
        if settings.mdns:
            nursery.start_soon(joiner.follow_mdns)
        started = now()
        _write_node_file(settings, started)
        nursery.start_soon(_keep_node_file, settings, started, now)
        if started.model_id is None:
            logger.info(
                "node %s serves no model (--no-model); it joins and routes on %s", peer_id, started.addrs
            )
        else:
            logger.info("node %s serving %s on %s", peer_id, started.model_id, started.addrs)
        task_status.started(started)
        await trio.sleep_forever()


def reach_config(settings: NodeSettings) -> ReachConfig:
    """What the node's host does about NAT: relay while public, keep reservations while not."""
    policy = RelayPolicy(
        max_reservations=settings.relay_max_reservations,
        max_circuits=settings.relay_max_circuits,
        circuit_bytes=settings.relay_circuit_bytes,
        circuit_s=settings.relay_circuit_s,
        reservation_s=settings.relay_reservation_s,
    )
    return ReachConfig(
        hole_punching=settings.hole_punching,
        relay=policy if settings.relay else None,
        reservations=settings.relays,
    )


async def _keep_node_file(
    settings: NodeSettings, started: NodeStarted, now: Callable[[], NodeStarted]
) -> None:
    """Rewrite the node file when what it says changes (the engine gave up or restarted,
    reachability was found out, addresses changed)."""
    last = started
    while True:
        await trio.sleep(NODE_FILE_EVERY_S)
        current = now()
        if current != last:
            _write_node_file(settings, current)
            last = current


def _write_node_file(settings: NodeSettings, started: NodeStarted) -> None:
    path = settings.home / NODE_FILE
    record = {**started.record(), "pid": os.getpid()}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)
