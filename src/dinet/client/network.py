"""A client's view of the network: its own host, the peers it found, their manifests."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal

import trio

from dinet.client.health import HealthBook
from dinet.client.payments import ChannelBook
from dinet.config import ClientSettings
from dinet.errors import ConfigError, NoCapablePeer, PeerUnreachable, ReputationError, RequestError
from dinet.ledger import Ledger
from dinet.models.catalog import DEFAULT_MODEL_ID
from dinet.p2p.directory import PeerDirectory
from dinet.p2p.gate import peer_gate
from dinet.p2p.host import DIAL_TIMEOUT_S, PeerHost, open_host
from dinet.p2p.identity import CLIENT_IDENTITY, load_or_create_identity
from dinet.p2p.joining import Joiner
from dinet.p2p.liveness import LivenessWatch
from dinet.p2p.reach import ReachConfig
from dinet.routing.affinity import PrefixMemory
from dinet.routing.coordinates import CoordinateBook, placed
from dinet.routing.select import EXCLUDE_BELOW, MIN_EVIDENCE, PeerView, trusted
from dinet.routing.shard import StageOffer
from dinet.settle import channels_at
from dinet.trust.outcomes import OutcomeRecorder
from dinet.trust.reputation import Event, Reputation
from dinet.wire.ids import ModelHash, PeerId
from dinet.wire.keys import SigningKey
from dinet.wire.manifest import Manifest, ModelOffer

Task = Literal["generate", "embed"]

logger = logging.getLogger(__name__)

UNMET_NAMED = 3  # an error names at most this many peers that could not be met, with why
UNMET_MET_AT_ONCE = 32  # peers heard of (not met yet) that one look meets at once
IN_USE_S = 60.0  # a candidate found is watched this long after the last look for its model


@dataclass
class Network:
    host: PeerHost
    directory: PeerDirectory = field(default_factory=PeerDirectory)
    rtt_ms: dict[PeerId, float] = field(default_factory=dict)
    health: HealthBook = field(default_factory=HealthBook)
    prefixes: PrefixMemory = field(default_factory=PrefixMemory)  # which peer holds which prompt beginnings
    liveness: LivenessWatch | None = None
    in_chain: Counter[PeerId] = field(default_factory=Counter)  # stages holding our chain sessions: unprobed
    ledger: Ledger | None = None  # countersigned receipts are kept here
    payments: ChannelBook | None = None  # the payment channels that pay nodes that take them
    max_price: float | None = None  # most credits per token this client pays
    outcomes: OutcomeRecorder | None = None  # told how verified answers fared, per peer
    reputation: Reputation | None = None  # what this client has seen each peer do
    exclude_below: float = EXCLUDE_BELOW  # see dinet.routing.select.trusted
    min_evidence: float = MIN_EVIDENCE
    tasks: trio.Nursery | None = None  # background tasks of this network's requests (chain listeners)
    dial_timeout_s: float = DIAL_TIMEOUT_S  # one dial, one manifest query, or opening a request's stream
    # Peers forgotten because they could not be met: their manifest then, and why (for errors).
    unmet: dict[PeerId, tuple[Manifest | None, str]] = field(default_factory=dict)
    # Peers in use or about to be, each until when: only these are probed for liveness.
    in_use: dict[PeerId, float] = field(default_factory=dict)
    joiner: Joiner = field(init=False)
    # Our place in the latency space, from the round trips we measure: estimates the
    # round trip to peers never probed.
    coordinates: CoordinateBook = field(init=False)

    def __post_init__(self) -> None:
        self.coordinates = CoordinateBook(self.directory.get)
        self.host.on_rtt(self.coordinates.sample)
        # A peer that answers is timed; one that cannot be met is forgotten until heard of again.
        self.joiner = Joiner(
            self.host,
            self.directory,
            on_answer=self._answered,
            on_silent=self.forget,
            dial_timeout_s=self.dial_timeout_s,
        )

    async def channel_for(self, peer_id: PeerId) -> str | None:
        """The payment channel that pays `peer_id` for our requests, if it takes them and
        we have (or may open) one; see dinet.client.payments."""
        if self.payments is None:
            return None
        manifest = self.directory.get(peer_id)
        return await self.payments.channel_for(peer_id, None if manifest is None else manifest.payment)

    async def note(self, peer_id: PeerId, event: Event) -> None:
        """Add an event to the peer's reputation (if this network keeps one).

        A reputation file that cannot be written costs the event, never the answer.
        """
        await self.note_all([(peer_id, event)])

    async def note_all(self, events: list[tuple[PeerId, Event]]) -> None:
        """Several events in one transaction (a vote's agreements and dissents)."""
        if self.reputation is None or not events:
            return
        try:
            await trio.to_thread.run_sync(self.reputation.record_many, events)
        except ReputationError as exc:
            logger.warning("reputation not updated: %s", exc)

    @property
    def peer_id(self) -> PeerId:
        return self.host.peer_id

    @property
    def key(self) -> SigningKey:
        return self.host.key

    def _serving_us(self, peer_id: PeerId) -> bool:
        """Whether the peer is in one of our chains or has one of our requests: not probed
        then. The request or session fails (and is failed over) if the peer dies, and a
        probe would count against the peer's limit for us: a busy peer that refused or
        delayed it was dropped from the directory under load, and with it a request's
        last candidates."""
        return self.in_chain[peer_id] > 0 or self.health.get(peer_id).in_flight > 0

    def _on_probe(self, peer_id: PeerId, rtt_ms: float | None) -> None:
        if rtt_ms is not None:
            self.rtt_ms[peer_id] = rtt_ms
            self.health.answered(peer_id)

    def watched(self) -> set[PeerId]:
        """The peers in use or about to be (found for a request within IN_USE_S)."""
        now = trio.current_time()
        for peer_id in [p for p, until in self.in_use.items() if until <= now]:
            del self.in_use[peer_id]
        return set(self.in_use)

    def use(self, peer_ids: Iterable[PeerId]) -> None:
        until = trio.current_time() + IN_USE_S
        for peer_id in peer_ids:
            self.in_use[peer_id] = until

    def _answered(self, peer_id: PeerId, rtt_ms: float) -> None:
        self.rtt_ms[peer_id] = rtt_ms
        self.unmet.pop(peer_id, None)

    def forget(self, peer_id: PeerId, why: str = "") -> None:
        manifest = self.directory.get(peer_id)
        if why:  # None: a provider the DHT named, never met, so no manifest of it is known
            self.unmet[peer_id] = (manifest, why)
        self.directory.remove(peer_id)
        self.rtt_ms.pop(peer_id, None)

    async def probe_all(self, manifests: list[Manifest]) -> None:
        """Meet the peers named in these manifests and refresh them first-hand."""
        await self.joiner.meet_all(manifests)

    async def look(self, model_id: str | None = None, model_hash: ModelHash | None = None) -> None:
        """Meet peers that serve the model (any model if neither is named): those other
        peers told us of and we have not met, a bounded sample at a time, and a sample of
        the providers the DHT names."""
        unmet = [m for m in self.directory.serving(model_id, model_hash) if m.peer_id not in self.rtt_ms]
        if model_id is None and model_hash is None:
            model_id = DEFAULT_MODEL_ID  # the DHT names servers of a model, not of any: try the usual one
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.probe_all, unmet[:UNMET_MET_AT_ONCE])
            nursery.start_soon(self.joiner.look_for, model_id, model_hash)

    def candidates(
        self,
        model_id: str | None,
        model_hash: ModelHash | None,
        task: Task = "generate",
        *,
        tools: bool = False,
    ) -> list[PeerView]:
        """Peers serving the model for `task` that are answering and not backed off, with
        their reputation (excluded ones too: see `trusted`). With `tools`, only peers whose
        offer of it declares tool support (a request that uses tools: see
        `GenerationParams.uses_tools`)."""
        now = trio.current_time()
        standings = self.reputation.standings() if self.reputation is not None else {}
        views = []
        for m in self.directory.manifests():
            if not _serves_whole(m, model_id, model_hash, task, tools) or m.peer_id in self.unmet:
                continue  # a peer that could not be met is no candidate until it answers
            if not self.health.usable(m.peer_id, now):
                continue
            record = self.health.get(m.peer_id)
            standing = standings.get(m.peer_id)
            views.append(
                PeerView(
                    peer_id=m.peer_id,
                    rtt_ms=self.rtt_ms.get(m.peer_id),
                    estimated_rtt_ms=self.coordinates.estimate_ms(m),
                    tokens_per_s=m.tokens_per_s,
                    ttft_ms=m.ttft_ms,
                    # Its advert is seconds old: our own requests count as they are now,
                    # not as they were when it was issued.
                    active=max(0, m.load.active - record.ours_running_at(m.issued_at)) + record.in_flight,
                    queued=m.load.queued,
                    max_concurrent=m.max_concurrent,
                    price_per_token=m.price_per_token,
                    price_per_prompt_token=m.price_per_prompt_token,
                    observed_tokens_per_s=record.observed_tokens_per_s,
                    observed_age_s=now - record.observed_at,
                    region=m.region,
                    reputation=None if standing is None else standing.score,
                    evidence=0.0 if standing is None else standing.events,
                )
            )
        return views

    def stage_offers(
        self, model_id: str | None, model_hash: ModelHash | None
    ) -> list[tuple[ModelOffer, StageOffer]]:
        """Pipeline stages serving the model that are answering and not backed off."""
        now = trio.current_time()
        found = []
        for m in self.directory.manifests():
            if not self.health.usable(m.peer_id, now):
                continue
            for o in m.models:
                if o.stage and _matches(o.model_id, o.model_hash, model_id, model_hash):
                    latency = 1000.0 / m.tokens_per_s if m.tokens_per_s > 0 else None
                    rtt = self.rtt_ms.get(m.peer_id)
                    stage = StageOffer(
                        m.peer_id,
                        o.layers[0],
                        o.layers[1],
                        latency,
                        rtt,
                        m.price_per_token,
                        m.price_per_prompt_token,
                        placed(m),
                    )
                    found.append((o, stage))
        return found

    def trusted(self, peers: list[PeerView]) -> list[PeerView]:
        """`peers` without those this client excludes for a low reputation."""
        return trusted(peers, self.exclude_below, self.min_evidence)

    async def discover(
        self,
        model_id: str | None,
        model_hash: ModelHash | None,
        *,
        timeout: float,
        want: int = 1,
        or_stages: bool = False,
        task: Task = "generate",
        tools: bool = False,
    ) -> list[PeerView]:
        """Peers serving the model, looking until `want` are found or `timeout` passes.

        With `or_stages`, pipeline stages of the model also end the search (the list
        of whole-model peers may then be empty). With `tools`, only peers whose offer
        declares tool support count (see `candidates`); when none is found but others
        serve the model, RequestError naming `tools` (`no_tool_support`). A look under way
        at the deadline may finish, for one dial timeout more at most: the peers it is
        meeting may still refuse us, and that refusal is the reason to tell.
        """
        deadline = trio.current_time() + timeout
        with trio.move_on_at(deadline + self.dial_timeout_s):
            while trio.current_time() < deadline:
                known = self.candidates(model_id, model_hash, task, tools=tools)
                if len(known) < want or any(p.rtt_ms is None for p in known):
                    await self.look(model_id, model_hash)
                found = self.candidates(model_id, model_hash, task, tools=tools)
                if len(found) >= want or (or_stages and self.stage_offers(model_id, model_hash)):
                    self.use(p.peer_id for p in found)
                    return found
                await trio.sleep(0.5)
        found = self.candidates(model_id, model_hash, task, tools=tools)
        self.use(p.peer_id for p in found)
        if or_stages and self.stage_offers(model_id, model_hash):
            return found
        if not found and tools and self.candidates(model_id, model_hash, task):
            raise no_tool_support(model_hash or model_id)
        if not found:
            wanted = model_hash or model_id or ("any model" if task == "generate" else "any embedding model")
            raise NoCapablePeer(f"no reachable peer serves {wanted}{self._why_unmet(model_id, model_hash)}")
        return found

    def _why_unmet(self, model_id: str | None, model_hash: ModelHash | None) -> str:
        """Why peers heard to serve the model could not be met (a gate's refusal, say), if any were."""
        whys = [
            f"{peer_id} serves it but could not be met: {why}"
            for peer_id, (manifest, why) in self.unmet.items()
            if manifest is None or _serves_whole(manifest, model_id, model_hash)
        ]
        return "".join(f"; {w}" for w in whys[:UNMET_NAMED])


def peer_trust(network: Network, peer_id: PeerId) -> dict[str, object]:
    """A peer's reputation as `din peers --json` and the gateway show it."""
    standing = network.reputation.standing(peer_id) if network.reputation is not None else None
    if standing is None:
        return {"reputation": None, "evidence": 0.0, "excluded": False}
    view = PeerView(peer_id, None, 0.0, 0.0, 0, 0, 1, reputation=standing.score, evidence=standing.events)
    return {
        "reputation": round(standing.score, 4),
        "evidence": round(standing.events, 2),
        "excluded": not network.trusted([view]),
    }


def no_tool_support(model: str | None) -> RequestError:
    """The error for a request with tools that no peer serving `model` (None: any model) can
    take, because no version's chat template declares tool support. It names `tools`."""
    which = "every model served now" if model is None else f"model {model!r}"
    return RequestError(
        f"tools: the chat template of {which} declares no tool support"
        " (dinet reads tool calls in the Hermes <tool_call> format): leave out tools,"
        " tool calls and tool messages",
        "tools",
    )


def _serves_whole(
    manifest: Manifest,
    model_id: str | None,
    model_hash: ModelHash | None,
    task: Task = "generate",
    tools: bool = False,
) -> bool:
    """Whether the peer serves the whole model for `task` (not only a pipeline stage of it),
    with tool support if `tools`."""
    return any(
        not o.stage
        and o.task == task
        and (o.tools or not tools)
        and _matches(o.model_id, o.model_hash, model_id, model_hash)
        for o in manifest.models
    )


def _matches(
    offer_id: str, offer_hash: ModelHash, model_id: str | None, model_hash: ModelHash | None
) -> bool:
    return (model_id is None or offer_id == model_id) and (model_hash is None or offer_hash == model_hash)


def channel_book(settings: ClientSettings, peer_id: PeerId, ledger: Ledger | None) -> ChannelBook | None:
    """The client's payment channels on the chain at --chain-rpc, if it names one."""
    if settings.chain_rpc is None or ledger is None:
        return None
    if settings.channel_contract is None:
        raise ConfigError("--chain-rpc needs --channel-contract (the payment channels contract's address)")
    return ChannelBook(
        channels_at(settings.chain_rpc, settings.channel_contract, settings.home),
        ledger,
        peer_id,
        deposit_wei=settings.channel_deposit_wei,
        timeout_s=settings.channel_timeout_s,
    )


@asynccontextmanager
async def open_network(settings: ClientSettings) -> AsyncIterator[Network]:
    """A running client host, joined through the bootstrap peers (and mDNS if on)."""
    key = load_or_create_identity(settings.home, CLIENT_IDENTITY)
    gate = peer_gate(settings.swarm_key, settings.allow_peers)
    reach = ReachConfig(hole_punching=settings.hole_punching)  # a client dials out: no relaying, no slots
    async with open_host(
        key, ["/ip4/0.0.0.0/tcp/0"], mdns=settings.mdns, dht="client", reach=reach, gate=gate
    ) as host:
        network = Network(
            host,
            PeerDirectory(on_moved=lambda m: host.remember_addrs(m.peer_id, m.addrs)),
            ledger=Ledger.in_home(settings.home),
            max_price=settings.max_price,
            reputation=Reputation.in_home(settings.home, settings.reputation_half_life_h * 3600),
            exclude_below=settings.exclude_below,
            min_evidence=settings.min_evidence,
            dial_timeout_s=settings.dial_timeout_s,
            # With no links kept, no peer is known to hold anything: routing as before.
            prefixes=PrefixMemory() if settings.prefix_affinity else PrefixMemory(max_links=0),
        )
        network.outcomes = network.reputation  # verified answers count in reputations too
        network.payments = await trio.to_thread.run_sync(channel_book, settings, key.peer_id, network.ledger)
        if settings.bootstrap and not await network.joiner.join(settings.bootstrap):
            raise PeerUnreachable(f"no bootstrap peer answered: {network.joiner.why_unreached()}")
        network.liveness = LivenessWatch(
            host,
            network.directory,
            network._on_probe,
            timeout=settings.probe_timeout_s,
            dial_timeout=settings.dial_timeout_s,
            resting=network._serving_us,
            watched=network.watched,
        )
        async with trio.open_nursery() as nursery:
            network.tasks = nursery
            nursery.start_soon(network.liveness.run)
            if settings.mdns:
                nursery.start_soon(network.joiner.follow_mdns)
            yield network
            nursery.cancel_scope.cancel()
