"""A dinet node: one libp2p host, announced and discoverable, serving one engine, several
(`--also-serve`) or none."""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field, replace

import trio

from dinet.config import NodeSettings
from dinet.errors import ConfigError
from dinet.ledger import Ledger
from dinet.models.store import ModelStore
from dinet.node._serving import (
    Serving,
    Shared,
    fake_model,
    findable,
    model_stage,
    no_engine,
    peer_limiter,
    shared_by_models,
    whole_model,
)
from dinet.node._together import together
from dinet.node.auto import serving_auto
from dinet.node.chores import Chores
from dinet.node.chunks import ModelKeeper, chunk_server, prepare_model
from dinet.node.debts import DebtDesk
from dinet.node.demand import DemandDesk
from dinet.node.embedding import EmbeddingServing, embedding_served
from dinet.node.following import following
from dinet.node.hosting import Hosting
from dinet.node.manifests import ManifestPublisher
from dinet.node.payments import PaymentDesk, PaymentPolicy
from dinet.node.receipts import Accountant, Prices
from dinet.node.watching import PeerWatch
from dinet.p2p.directory import PeerDirectory
from dinet.p2p.gate import peer_gate
from dinet.p2p.host import PeerHost, build_host
from dinet.p2p.identity import CLIENT_IDENTITY, load_or_create_identity
from dinet.p2p.joining import Joiner
from dinet.p2p.reach import ReachConfig
from dinet.p2p.reachability import Reachability
from dinet.p2p.relay import RelayPolicy
from dinet.p2p.websockets import WebSocketTls
from dinet.routing.coordinates import CoordinateBook
from dinet.settle import channels_at
from dinet.wire.ids import CHUNKS_PROTOCOL, MANIFEST_PROTOCOL, ModelHash, PeerId
from dinet.wire.keys import SigningKey

logger = logging.getLogger(__name__)

NODE_FILE = "node.json"
NODE_FILE_EVERY_S = 5.0


@dataclass(frozen=True)
class NodeStarted:
    peer_id: PeerId
    addrs: list[str]
    model_id: str | None  # None: the node serves no model (--no-model)
    model_hash: ModelHash | None
    engine: dict[str, object] | None  # engine_state(): served, error, sandbox; None: no model
    also_served: list[dict[str, object]]  # the models served beside it (--also-serve), each as above
    reachability: Reachability
    advertised: list[str]  # what peers are told to dial: confirmed addresses, relay circuits
    reach: dict[str, int]  # PeerHost.reach_counters(): hole punches, reservations, relaying
    manifests_held: int  # in its directory, its own included: bounded, whatever the network's size
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
            "also_served": self.also_served,
            "reachability": self.reachability.as_dict(),
            "advertised": self.advertised,
            "reach": self.reach,
            "manifests_held": self.manifests_held,
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
    desk = DemandDesk(key, key.peer_id, settings, random.Random())
    money = Money(
        await trio.to_thread.run_sync(_payment_desk, settings, key),  # reads the chain id
        _debt_desk(settings, key),
    )
    if settings.no_model:
        serving = no_engine()
    elif settings.fake_engine:  # benchmarks only
        serving = fake_model(
            settings, _accountant(settings, key, money), lambda model, busy: desk.saw(model, busy=busy)
        )
    elif settings.serve == "auto":
        serving = serving_auto(
            settings,
            lambda model: (
                no_engine()
                if model is None
                else _model_served(_serving_model(settings, model), key, host, desk, money)
            ),
            desk,
        )
    elif settings.follow:
        serving = following(
            settings,
            lambda model: _model_served(_serving_model(settings, model), key, host, desk, money),
        )
    elif settings.also_serve:
        serving = _models_served(settings, key, host, desk, money)
    else:
        serving = _model_served(settings, key, host, desk, money)
    embedding_accountant = _accountant(settings, key) if settings.embedding_model is not None else None
    async with serving as served, embedding_served(settings, embedding_accountant) as embedding:
        await _run(settings, key, host, served, desk, task_status, embedding, money)


def _serving_model(settings: NodeSettings, model: ModelHash | None) -> NodeSettings:
    """`settings` with `model` to serve (None: the model they name)."""
    return settings if model is None else settings.model_copy(update={"model": model})


@asynccontextmanager
async def _model_served(
    settings: NodeSettings, key: SigningKey, host: PeerHost, desk: DemandDesk, money: Money
) -> AsyncIterator[Serving]:
    """The node's model, imported or pulled from peers, served by its engine (or as a
    pipeline stage), its bytes kept healthy and shared with peers."""
    async with _model_kept(settings, key, host, desk, money) as (serving, keeper):
        yield _sharing_chunks(serving, [keeper])


@asynccontextmanager
async def _models_served(
    settings: NodeSettings, key: SigningKey, host: PeerHost, desk: DemandDesk, money: Money
) -> AsyncIterator[Serving]:
    """The node's model and those it also serves (`--also-serve`), one after the other
    into engines of their own that share its slots, queue, per-peer limits and clients'
    standing; requests passed to the model they name (`dinet.node._together`), every
    model's bytes kept."""
    shared = shared_by_models(settings, Ledger.in_home(settings.home), key.peer_id)
    async with AsyncExitStack() as stack:
        kept: list[tuple[Serving, ModelKeeper]] = []
        for index, name in enumerate((settings.model, *settings.also_serve)):
            one = settings.model_copy(update={"model": name, "also_serve": []})
            log_name = "worker.log" if index == 0 else f"worker-{index}.log"
            serving, keeper = await stack.enter_async_context(
                _model_kept(one, key, host, desk, money, shared, log_name)
            )
            served = [s.model_hash for s, _ in kept]
            if serving.model_hash in served:
                raise ConfigError(f"--also-serve {name}: the node serves {serving.model_hash} already")
            kept.append((serving, keeper))
        servings = [serving for serving, _ in kept]
        yield _sharing_chunks(
            together(servings, peer_limiter(settings), settings.max_request_bytes),
            [keeper for _, keeper in kept],
        )


@asynccontextmanager
async def _model_kept(
    settings: NodeSettings,
    key: SigningKey,
    host: PeerHost,
    desk: DemandDesk,
    money: Money,
    shared: Shared | None = None,
    log_name: str = "worker.log",
) -> AsyncIterator[tuple[Serving, ModelKeeper]]:
    """The model the settings name, served, and the keeper of its bytes."""
    model, model_hash = await prepare_model(settings)
    if settings.liar is not None:
        logger.warning(
            "THIS NODE LIES (%s) while advertising %s: for tests of verification only",
            settings.liar,
            model_hash,
        )
    accountant = _accountant(settings, key, money)
    serving_context = (
        model_stage(settings, model, model_hash, host)
        if settings.layers is not None
        else whole_model(
            settings,
            model,
            model_hash,
            accountant,
            lambda busy: desk.saw(model_hash, busy=busy),
            shared,
            log_name,
        )
    )
    async with serving_context as serving:
        lull = Chores(serving.busy).lull
        keeper = ModelKeeper(ModelStore(settings.home), model_hash, settings.scrub_mb_s * 1e6, lull)
        yield _kept(serving, keeper), keeper


@dataclass(frozen=True)
class Money:
    """What a node's accountants share: its payment channels (if it takes them) and its
    book of debts (its own debtors, and those that peers of standing publish)."""

    payments: PaymentDesk | None
    debts: DebtDesk


def _home_ids(settings: NodeSettings, key: SigningKey) -> list[PeerId]:
    """The peer ids this home answers for: its node and, if it has one, its client."""
    me = [key.peer_id]
    if (settings.home / CLIENT_IDENTITY).exists():  # this home's own questions earn its peers standing
        me.append(load_or_create_identity(settings.home, CLIENT_IDENTITY).peer_id)
    return me


def _accountant(settings: NodeSettings, key: SigningKey, money: Money | None = None) -> Accountant:
    """Who signs this node's receipts and keeps its ledger (and its channels' vouchers)."""
    me = _home_ids(settings, key)
    return Accountant(
        key,
        key.peer_id,
        Ledger.in_home(settings.home),
        Prices(settings.prompt_price, settings.price),
        me,
        allowance=settings.free_allowance,
        priority=settings.priority,
        payments=None if money is None else money.payments,
        debts=None if money is None else money.debts,
    )


def _debt_desk(settings: NodeSettings, key: SigningKey) -> DebtDesk:
    return DebtDesk(
        key,
        key.peer_id,
        Ledger.in_home(settings.home),
        _home_ids(settings, key),
        allowance=settings.free_allowance,
        every_s=settings.debt_every_s,
        refuse_over=settings.refuse_debt,
    )


def _payment_desk(settings: NodeSettings, key: SigningKey) -> PaymentDesk | None:
    """The node's payment channels on the chain at --chain-rpc, if it names one."""
    if settings.chain_rpc is None:
        return None
    if settings.channel_contract is None:
        raise ConfigError("--chain-rpc needs --channel-contract (the payment channels contract's address)")
    channels = channels_at(settings.chain_rpc, settings.channel_contract, settings.home)
    policy = PaymentPolicy(
        wei_per_credit=settings.wei_per_credit,
        token=settings.channel_token,
        required=settings.require_channel,
        claim_at_wei=settings.claim_at_wei,
        claim_after_s=settings.claim_after_s,
        margin_s=settings.channel_margin_s,
    )
    return PaymentDesk(
        channels,
        Ledger.in_home(settings.home),
        key.peer_id,
        policy,
        lambda: (settings.prompt_price, settings.price),
    )


def _kept(serving: Serving, keeper: ModelKeeper) -> Serving:
    """`serving` with its model's bytes in the keeper's care: requests refused and the
    offer withdrawn while any chunk is damaged, repairs made, and the model announced in
    the DHT."""
    return replace(
        serving,
        handlers={protocol: keeper.guard(handle) for protocol, handle in serving.handlers.items()},
        # Never offer damaged bytes, nor a model whose engine has given up.
        available=lambda: keeper.healthy and serving.available(),
        background=[
            *serving.background,
            keeper.keep_healthy,
            *findable(keeper.model_hash, serving.model_id),
        ],
    )


def _sharing_chunks(serving: Serving, keepers: list[ModelKeeper]) -> Serving:
    """`serving` with its models' chunks served to peers (`chunk_server`)."""
    return replace(serving, handlers={**serving.handlers, CHUNKS_PROTOCOL: chunk_server(keepers).handle})


async def _run(
    settings: NodeSettings,
    key: SigningKey,
    host: PeerHost,
    serving: Serving,
    desk: DemandDesk,
    task_status: trio.TaskStatus[NodeStarted],  # type: ignore[name-defined]
    embedding: EmbeddingServing | None = None,
    money: Money | None = None,
) -> None:
    """What every node does, whatever it serves: listen, join, keep the DHT and a bounded
    set of connections, gossip its manifest on its model's topic, pass manifests on,
    publish the demand it sees, and say what it is in its node file."""
    peer_id = key.peer_id
    payments = None if money is None else money.payments
    directory = PeerDirectory(peer_id, lambda m: host.remember_addrs(m.peer_id, m.addrs))
    coordinates = CoordinateBook(directory.get)
    host.on_rtt(coordinates.sample)

    def describe() -> dict[str, object]:
        served = serving.offers()
        embeds = embedding.offer() if embedding is not None else None
        return {
            "region": settings.region,
            "addrs": tuple(host.advertised_addrs()[:16]),
            "models": served + ((embeds,) if embeds is not None else ()),
            "max_concurrent": settings.max_concurrent,
            "price_per_token": settings.price,
            "price_per_prompt_token": settings.prompt_price,
            "reach": host.reachability().state,
            "coords": coordinates.advert(),
            "payment": None if payments is None else payments.terms(),
            **serving.figures(),
        }

    def now() -> NodeStarted:
        return NodeStarted(
            peer_id,
            host.full_addrs(),
            serving.model_id,
            serving.model_hash,
            serving.state(),
            [_also_record(also) for also in serving.also],
            host.reachability(),
            host.advertised_addrs(),
            host.reach_counters(),
            len(directory.manifests(include_own=True)),
            now,
        )

    publisher = ManifestPublisher(
        key,
        peer_id,
        directory,
        describe,
        also_follow=desk.watched,
        on_demand=desk.heard,
        on_debt=(lambda _: None) if money is None else money.debts.heard,
    )
    handlers = {**serving.handlers, **(embedding.handlers if embedding is not None else {})}
    for protocol, handle in handlers.items():
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
        ws_tls=_ws_tls(settings),
    )
    async with running, trio.open_nursery() as nursery:
        joiner = Joiner(host, directory, report_level=logging.INFO, dial_timeout_s=settings.dial_timeout_s)
        nursery.start_soon(publisher.gossip, host, settings.heartbeat_s)
        nursery.start_soon(desk.publish, host, directory, lambda: _offered(serving))
        nursery.start_soon(joiner.keep_joined, settings.bootstrap)
        watch = PeerWatch(host, directory, joiner, nursery)
        nursery.start_soon(host.keep_bounded, settings.max_connections, watch.kept)
        nursery.start_soon(watch.run)
        nursery.start_soon(Hosting(host, directory).run)
        for task in serving.background:
            nursery.start_soon(task, joiner)
        if embedding is not None:
            for task in findable(embedding.model_hash, embedding.model_id):
                nursery.start_soon(task, joiner)
        if settings.mdns:
            nursery.start_soon(joiner.follow_mdns)
        if payments is not None:
            nursery.start_soon(payments.run)
        if money is not None:
            nursery.start_soon(money.debts.publish, host, lambda: _offered(serving))
        started = now()
        _write_node_file(settings, started)
        nursery.start_soon(_keep_node_file, settings, started, now)
        if settings.serve == "auto":
            logger.info("node %s serves automatically; it joins and routes on %s", peer_id, started.addrs)
        elif started.model_id is None:
            logger.info(
                "node %s serves no model (--no-model); it joins and routes on %s", peer_id, started.addrs
            )
        else:
            also = "".join(f" and {a['model_id']}" for a in started.also_served)
            logger.info("node %s serving %s%s on %s", peer_id, started.model_id, also, started.addrs)
        task_status.started(started)
        await trio.sleep_forever()


def _offered(serving: Serving) -> list[ModelHash]:
    """The models whose topics carry the node's demand and debt records: each it has an
    offer for (whether or not its engine is up this moment)."""
    return [s.offer.model_hash for s in (serving, *serving.also) if s.offer is not None]


def _also_record(serving: Serving) -> dict[str, object]:
    """A model served beside the first, as the node file and `din node --json` say it."""
    return {"model_id": serving.model_id, "model_hash": serving.model_hash, "engine": serving.state()}


def _ws_tls(settings: NodeSettings) -> WebSocketTls | None:
    """The certificate of the node's /wss listeners (the settings give both files or neither)."""
    if settings.ws_cert is None or settings.ws_key is None:
        return None
    return WebSocketTls(settings.ws_cert, settings.ws_key)


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
