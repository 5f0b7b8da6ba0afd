"""A dinet node: one engine, one libp2p host, announced and discoverable."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import trio

from dinet.config import NodeSettings
from dinet.ledger import Ledger
from dinet.models.store import ModelStore
from dinet.node._serving import model_stage, whole_model
from dinet.node.chores import Chores
from dinet.node.chunks import ModelKeeper, prepare_model
from dinet.node.manifests import ManifestPublisher
from dinet.node.receipts import Accountant, Prices
from dinet.p2p.directory import PeerDirectory
from dinet.p2p.host import PeerHost, build_host
from dinet.p2p.identity import CLIENT_IDENTITY, load_or_create_identity
from dinet.p2p.joining import Joiner
from dinet.p2p.liveness import LivenessWatch
from dinet.p2p.reach import ReachConfig, ReachState
from dinet.p2p.relay import RelayPolicy
from dinet.wire.ids import CHUNKS_PROTOCOL, MANIFEST_PROTOCOL, ModelHash, PeerId

logger = logging.getLogger(__name__)

NODE_FILE = "node.json"
PULL_EVERY_S = 3.0
PULL_FANOUT = 3
LIVENESS_EVERY_S = 2.0
# TESTING ONLY, until AutoNAT decides (helper "autonat", dinet.p2p.autonat): the NAT lab tells
# its nodes whether they are public ("public" or "private"). Nothing else may set it.
TESTING_REACHABILITY_ENV = "DINET_TESTING_REACHABILITY"


@dataclass(frozen=True)
class NodeStarted:
    peer_id: PeerId
    addrs: list[str]
    model_id: str
    model_hash: ModelHash
    engine: dict[str, object] = field(default_factory=dict)  # engine_state(): served, error, sandbox
    reach: dict[str, int] = field(default_factory=dict)  # PeerHost.reach_counters(): punches, relaying


async def serve_node(
    settings: NodeSettings,
    *,
    # trio-typing's stubs, which libp2p pulls in, hide trio's own TaskStatus from mypy.
    task_status: trio.TaskStatus[NodeStarted] = trio.TASK_STATUS_IGNORED,  # type: ignore[name-defined]
) -> None:
    """Run a node until cancelled. Reports NodeStarted once it is serving."""
    key = load_or_create_identity(settings.home)
    peer_id = key.peer_id
    model, model_hash = await prepare_model(settings)  # imported into the store, or pulled from peers
    host = build_host(key, enable_mdns=settings.mdns)
    directory = PeerDirectory(peer_id, lambda m: host.remember_addrs(m.peer_id, m.addrs))

    if settings.liar is not None:
        logger.warning(
            "THIS NODE LIES (%s) while advertising %s: for tests of verification only",
            settings.liar,
            model_hash,
        )
    ledger = Ledger.in_home(settings.home)
    me = [peer_id]
    if (settings.home / CLIENT_IDENTITY).exists():  # this home's own questions earn its peers standing
        me.append(load_or_create_identity(settings.home, CLIENT_IDENTITY).peer_id)
    accountant = Accountant(
        key,
        peer_id,
        ledger,
        Prices(settings.prompt_price, settings.price),
        me,
        allowance=settings.free_allowance,
        priority=settings.priority,
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
                "addrs": tuple(host.advertised_addrs()[:16]),
                "models": (offered,) if offered is not None else (),
                "max_concurrent": settings.max_concurrent,
                "price_per_token": settings.price,
                "price_per_prompt_token": settings.prompt_price,
                **serving.figures(),
            }

        publisher = ManifestPublisher(key, peer_id, directory, describe)
        for protocol, handle in serving.handlers.items():
            host.set_handler(protocol, keeper.guard(handle))
        host.set_handler(CHUNKS_PROTOCOL, keeper.server().handle)
        host.set_handler(MANIFEST_PROTOCOL, publisher.handle_query)

        reach = reach_config(settings)
        async with (
            host.running(settings.listen, dht="server", gossip=True, reach=reach),
            trio.open_nursery() as nursery,
        ):
            _assume_reachability_for_tests(host)
            joiner = Joiner(host, directory, meet_new_in=nursery, report_level=logging.INFO)
            nursery.start_soon(publisher.broadcast, host, settings.heartbeat_s)
            nursery.start_soon(publisher.follow, host, lambda m: joiner.meet_soon(m.peer_id, m.addrs))
            nursery.start_soon(joiner.keep_joined, settings.bootstrap)
            nursery.start_soon(joiner.keep_providing, model_hash)
            nursery.start_soon(joiner.pull_directories, PULL_EVERY_S, PULL_FANOUT, chores.lull)
            nursery.start_soon(keeper.keep_healthy, joiner)
            liveness = LivenessWatch(host, directory, interval=LIVENESS_EVERY_S, lull=chores.lull)
            nursery.start_soon(liveness.run)
            for task in serving.background:
                nursery.start_soon(task)
            if settings.mdns:
                nursery.start_soon(joiner.follow_mdns)
            started = NodeStarted(
                peer_id, host.advertised_addrs(), model.model_id, model_hash, serving.state()
            )
            _write_node_file(settings, started)
            nursery.start_soon(_keep_node_file, settings, started, serving.state, host)
            logger.info("node %s serving %s on %s", peer_id, model.model_id, started.addrs)
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


def _assume_reachability_for_tests(host: PeerHost) -> None:
    states: dict[str, ReachState] = {"public": "public", "private": "private"}
    assumed = states.get(os.environ.get(TESTING_REACHABILITY_ENV, ""))
    if assumed is not None:
        logger.warning("TESTING: reachability assumed %s (%s)", assumed, TESTING_REACHABILITY_ENV)
        host.set_reachability(assumed, f"assumed for a test ({TESTING_REACHABILITY_ENV})")


async def _keep_node_file(
    settings: NodeSettings,
    started: NodeStarted,
    engine_state: Callable[[], dict[str, object]],
    host: PeerHost,
) -> None:
    """Rewrite the node file when the engine's state changes (it gave up, it restarted),
    the node's addresses do (a relay reservation came or went) or its reach counters."""
    last = started
    while True:
        await trio.sleep(1.0)
        now = replace(
            started, engine=engine_state(), addrs=host.advertised_addrs(), reach=host.reach_counters()
        )
        if now != last:
            _write_node_file(settings, now)
            last = now


def _write_node_file(settings: NodeSettings, started: NodeStarted) -> None:
    path = settings.home / NODE_FILE
    record = {
        "peer_id": started.peer_id,
        "addrs": started.addrs,
        "model_id": started.model_id,
        "model_hash": started.model_hash,
        "pid": os.getpid(),
        "engine": started.engine,
        "reach": started.reach,
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)
