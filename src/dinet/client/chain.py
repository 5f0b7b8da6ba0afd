"""Asking through a chain of pipeline stages, with failover inside the chain.

The client plans a chain of stages that covers the model's blocks and opens one
session on each, relayed in a ring (`/dinet/shard/1`): each stage passes its hidden
states on to the next, and the last stage's chosen token goes back to the first as
its next step. The client sends only the prompt, then reads the last stage's sampled
tokens as they come, while it listens on every other stage's stream for a failure.
A token costs three messages around the ring, not six through the client.

When a stage dies, stalls, loses its session or cannot reach its neighbour, the client
plans a new chain without the stage at fault, from the peers still alive, and replays
the session into it: the same prompt ids in the same chunks, then each token in turn,
so every KV cache is rebuilt exactly and the last stage chooses the same tokens again.
Tokens already delivered are not delivered twice; the text is unchanged.

A request's limits (`StageRules`: only these peers, a price limit, the cheapest or the
fastest chain) hold for the first chain and every replacement alike; stages this client
excludes for a low reputation are never used.

Every session is opened checked: when the answer is complete the final chain's stages
sign receipts that must tile the blocks and chain, and a share of answers is audited
by replaying each stage on another holder (`dinet.client.stage_audit`).
"""

from __future__ import annotations

import logging
import math
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import trio

from dinet.client._records import Records
from dinet.client._stage_link import StageLink
from dinet.client.network import Network
from dinet.client.stage_audit import ChainLog, CheckTicket, StageCheck, check_stages
from dinet.errors import (
    AnswerTimedOut,
    MalformedMessage,
    NoCapablePeer,
    PeerError,
    PeerStalled,
    RemoteError,
    RoutingError,
    first_dinet_error,
)
from dinet.p2p.discovery import fetch_manifests
from dinet.p2p.host import PeerHost
from dinet.routing.select import PeerView, Policy
from dinet.routing.shard import By, Route, StageOffer, plan_shard_route
from dinet.wire.ids import ModelHash, PeerId
from dinet.wire.messages import GenerationParams, TokenFrame, Usage
from dinet.wire.shard import Draft, HiddenDType, ShardRelay, ShardSampled, rows_per_frame

logger = logging.getLogger(__name__)

PREFILL_ROWS = 256  # prompt tokens per prefill step
MAX_REPAIRS = 8  # chain replacements in one answer before giving up
STEP_STALL_S = 10.0  # no token for this long: the chain is stuck
STALL_PER_ROW_S = 0.05  # the first token waits for the whole prompt too
STALL_PROBE_S = 3.0  # after a stall, a stage that does not answer a manifest query this soon is left out
_REPLAYABLE = {"unknown_session", "internal", "busy", "rate_limited"}  # same peer may do

_T = TypeVar("_T")
# What a stage's stream brought: the last stage's token, the end of the stream, or a failure.
_Event = tuple[int, ShardSampled | None | Exception]


@dataclass(frozen=True)
class ChainPlan:
    route: Route
    model_id: str
    model_hash: ModelHash
    n_layers: int


@dataclass(frozen=True)
class ChainResult:
    """What an Answer needs from a finished chain."""

    model_id: str
    model_hash: ModelHash
    usage: Usage
    finish_reason: str
    chain: tuple[PeerId, ...]  # the peers of the final chain, in order
    peers_tried: tuple[PeerId, ...]  # every stage peer used, replacements included
    stage_check: StageCheck | None = None  # the final chain's receipts and audits


@dataclass(frozen=True)
class StageRules:
    """Which stages a chain may use, how it is chosen and run: the request's own choices."""

    policy: Policy = "latency"  # "cost": the cheapest chain; otherwise the least time per token
    max_price: float | None = None  # most credits per token for the whole chain (summed over its stages)
    only_peers: frozenset[PeerId] | None = None  # no stage outside these
    draft: Draft = "none"  # "lookup", "model": the first stage guesses tokens, checked a run at a time
    audit: float = 0.0  # share of answers whose stages are replayed on other holders (1: all)


async def plan_chain(
    network: Network,
    model_id: str | None,
    model_hash: ModelHash | None,
    *,
    timeout: float,
    exclude: frozenset[PeerId] = frozenset(),
    rules: StageRules = StageRules(),
) -> ChainPlan:
    """Look for stages until some chain covers the model, or NoCapablePeer after `timeout`.

    NoCapablePeer at once when chains exist but `rules` (a price limit) or reputations
    refuse every one of them."""
    last: RoutingError | None = None
    with trio.move_on_after(timeout):
        while True:
            await network.look(model_id, model_hash)
            try:
                return _plan(network, model_id, model_hash, exclude, rules)
            except NoCapablePeer:
                raise
            except RoutingError as exc:
                last = exc
            await trio.sleep(0.3)
    wanted = model_hash or model_id or "the model"
    raise NoCapablePeer(f"no chain of stages serves {wanted}" + (f": {last}" if last else ""))


def _plan(
    network: Network,
    model_id: str | None,
    model_hash: ModelHash | None,
    exclude: frozenset[PeerId],
    rules: StageRules,
) -> ChainPlan:
    groups: dict[tuple[ModelHash, str, int], list[StageOffer]] = defaultdict(list)
    for offer, stage in network.stage_offers(model_id, model_hash):
        if rules.only_peers is None or stage.peer_id in rules.only_peers:
            groups[(offer.model_hash, offer.model_id, offer.total_layers)].append(stage)
    if not groups:
        raise RoutingError("no stage serves the model" + (" among only_peers" if rules.only_peers else ""))
    distrusted = _distrusted(network)
    failures, refusals = [], []
    for (found_hash, found_id, n_layers), stages in sorted(groups.items()):  # deterministic order
        try:
            route = _route(stages, n_layers, exclude, distrusted, rules)
            return ChainPlan(route, found_id, found_hash, n_layers)
        except NoCapablePeer as exc:
            refusals.append(str(exc))
        except RoutingError as exc:
            failures.append(str(exc))
    if refusals:
        raise NoCapablePeer("; ".join(refusals))
    raise RoutingError("; ".join(failures))


def _route(
    stages: list[StageOffer],
    n_layers: int,
    exclude: frozenset[PeerId],
    distrusted: frozenset[PeerId],
    rules: StageRules,
) -> Route:
    """The chain `rules` choose. RoutingError when no chain covers the model (more stages may
    yet be found); NoCapablePeer when chains do, but reputations or the price limit refuse all."""
    plan_shard_route(stages, n_layers, exclude=exclude)
    allowed = exclude | distrusted
    try:
        by: By = "price" if rules.policy == "cost" else "time"
        route = plan_shard_route(stages, n_layers, exclude=allowed, by=by)
    except RoutingError:
        raise NoCapablePeer(
            "every chain of stages goes through a stage excluded for a low reputation "
            "(`din peers` shows the scores)"
        ) from None
    if route.within(rules.max_price):
        return route
    cheapest = plan_shard_route(stages, n_layers, exclude=allowed, by="price")
    if cheapest.within(rules.max_price):
        return cheapest  # not the fastest chain, but the fastest one within the limit may not exist
    raise NoCapablePeer(
        f"no chain of stages serves the model within {rules.max_price:g} credits per token: the cheapest "
        f"asks {cheapest.price_per_token:g} per token ({cheapest.price_per_prompt_token:g} per prompt token)"
    )


def _distrusted(network: Network) -> frozenset[PeerId]:
    """The peers this client excludes for a low reputation."""
    if network.reputation is None:
        return frozenset()
    views = [
        PeerView(peer_id, None, 0.0, 0.0, 0, 0, 1, reputation=s.score, evidence=s.events)
        for peer_id, s in network.reputation.standings().items()
    ]
    kept = {v.peer_id for v in network.trusted(views)}
    return frozenset(v.peer_id for v in views if v.peer_id not in kept)


class Chain:
    """One session across a ring of relaying stages, replaced whole when a stage fails."""

    def __init__(
        self,
        network: Network,
        plan: ChainPlan,
        params: GenerationParams,
        dtype: HiddenDType,
        *,
        rules: StageRules = StageRules(),
        records: Records | None = None,
    ) -> None:
        self._network = network
        self._plan = plan
        self._rules = rules  # a replacement chain keeps to them too
        self._records = Records(network) if records is None else records
        self._params = params
        self._dtype = dtype
        self.links: list[StageLink] = []
        self.tried: list[PeerId] = []
        self.repairs = 0  # chain replacements so far in this answer
        self._broken: set[PeerId] = set()
        self._events: trio.MemoryReceiveChannel[_Event] | None = None
        self._stall_s = STEP_STALL_S
        self._failed_opens: list[PeerId] = []  # peers whose session did not open, in the last start()
        self._resting: list[PeerId] = []  # counted in network.in_chain until close()
        self._unreached: Counter[PeerId] = Counter()  # relay failures towards each stage
        self._ticket = CheckTicket.new(rules.audit)  # the same for every replacement: one request
        self._log = ChainLog()  # what went into and came out of the current chain

    async def start(self) -> tuple[int, ...]:
        """Open a session on every stage of the plan, relayed in a ring, and send the
        prompt into the first; the prompt's token ids."""
        offers = list(self._plan.route.stages)
        session_ids = [uuid.uuid4().hex for _ in offers]
        self._log = ChainLog()
        self.links = await self._open_all(offers, session_ids)
        self._resting = [link.peer_id for link in self.links]  # left out of the client's liveness probes
        self._network.in_chain.update(self._resting)
        send, self._events = trio.open_memory_channel[_Event](math.inf)
        tasks = self._network.tasks
        assert tasks is not None, "a chain needs a network from open_network()"
        async with send:
            for k, link in enumerate(self.links):
                tasks.start_soon(_listen, k, link, send.clone())
        first = self.links[0]
        prompt = np.asarray(first.prompt_ids, dtype=np.int32).reshape(-1, 1)  # (T, 1)
        rows = min(PREFILL_ROWS, rows_per_frame(first.n_embd, self._dtype))
        chunks = [prompt[i : i + rows] for i in range(0, len(prompt), rows)]
        for seq, chunk in enumerate(chunks):  # only the last chunk's output is sampled
            self._log.sent.append(await first.send_prompt(chunk, seq, sample=seq == len(chunks) - 1))
        self._stall_s = STEP_STALL_S + STALL_PER_ROW_S * len(prompt)
        return first.prompt_ids

    async def _open_all(self, offers: list[StageOffer], session_ids: list[str]) -> list[StageLink]:
        links: list[StageLink | None] = [None] * len(offers)
        self._failed_opens = []

        async def open_one(k: int) -> None:
            after = (k + 1) % len(offers)  # the last stage's tokens go back to the first
            # Where this client reaches the next stage: a stage that has not met it dials there.
            addrs = tuple(self._network.host.known_addrs(offers[after].peer_id)[:16])
            relay = ShardRelay(peer_id=offers[after].peer_id, session_id=session_ids[after], addrs=addrs)
            self.tried.append(offers[k].peer_id)
            try:
                links[k] = await StageLink.open(
                    self._network.host,
                    offers[k],
                    self._plan.model_hash,
                    self._params,
                    self._dtype,
                    session_ids[k],
                    relay,
                    self._rules.draft,
                    self._ticket,
                )
            except (PeerError, MalformedMessage):
                self._failed_opens.append(offers[k].peer_id)
                raise

        try:
            async with trio.open_nursery() as nursery:
                for k in range(len(offers)):
                    nursery.start_soon(open_one, k)
        except BaseException as exc:
            for link in links:
                if link is not None:
                    await link.close(clean=False)
            ours = first_dinet_error(exc)  # one stage's failure, not trio's group of them
            if ours is not None and not isinstance(exc, trio.Cancelled):
                raise ours from None
            raise
        return [link for link in links if link is not None]

    async def begin(self) -> tuple[int, ...]:
        """`start()`, on a replacement chain if a stage does not open its session."""
        try:
            return await self.start()
        except (PeerError, MalformedMessage) as exc:
            await self._replace(set(self._failed_opens) or {self._plan.route.peers[0]}, exc)
            return self.links[0].prompt_ids

    async def next_sampled(self) -> ShardSampled:
        """The last stage's next token, replacing the chain as often as it breaks."""
        while True:
            k, event = await self._next_event()
            if isinstance(event, ShardSampled) and k == len(self.links) - 1:
                self._stall_s = STEP_STALL_S
                self._log.took(event)
                return event
            culprits = (
                await silent_peers(self._network.host, [link.peer_id for link in self.links])
                if k < 0
                else self._at_fault(k, event)
            )
            await self._replace(culprits, event)

    async def _next_event(self) -> _Event:
        assert self._events is not None, "start() first"
        with trio.move_on_after(self._stall_s):
            return await self._events.receive()
        return -1, PeerStalled(f"the chain sent no token for {self._stall_s:.1f} s")

    def _at_fault(self, k: int, event: ShardSampled | None | Exception) -> set[PeerId]:
        """The peers not to ask again in this answer, from what stage k's stream brought."""
        if isinstance(event, RemoteError) and event.code == "relay_failed":
            # k could not reach the next one: once may be the path (a circuit through a busy
            # relay, say) rather than the stage, so the chain is replayed as it was; twice, the
            # next stage is left out.
            after = self.links[(k + 1) % len(self.links)].peer_id
            self._unreached[after] += 1
            return {after} if self._unreached[after] > 1 else set()
        if isinstance(event, RemoteError) and event.code in _REPLAYABLE:
            return set()  # a lost session or a busy moment: the same peer may serve the replay
        return {self.links[k].peer_id}

    async def _replace(self, culprits: set[PeerId], cause: object) -> None:
        """Close this chain; plan another without the culprits and replay the session into it."""
        await self.close(clean=False)
        while True:
            self.repairs += 1
            if self.repairs > MAX_REPAIRS:
                raise NoCapablePeer(f"the chain failed {MAX_REPAIRS} times; last: {cause}")
            for peer_id in culprits:
                self._broken.add(peer_id)
                await self._records.failed(peer_id, cause if isinstance(cause, BaseException) else str(cause))
            logger.info("the chain broke (%s); replacing it without %s", cause, sorted(culprits) or "anyone")
            try:
                self._plan = _plan(
                    self._network,
                    self._plan.model_id,
                    self._plan.model_hash,
                    frozenset(self._broken),
                    self._rules,
                )
            except RoutingError as exc:
                raise NoCapablePeer(f"no chain of stages is left: {exc}") from None
            try:
                await self.start()
                return
            except (PeerError, MalformedMessage) as exc:  # a session did not open, or the prompt not go in
                cause, culprits = exc, set(self._failed_opens) or {self._plan.route.peers[0]}
            await self.close(clean=False)

    async def check(self) -> StageCheck:
        """The final chain's receipts checked, and its stages audited if this answer is."""
        plan = self._plan
        return await check_stages(
            self._network,
            self.links,
            plan.model_hash,
            plan.n_layers,
            self._params,
            self._dtype,
            self._ticket,
            self._log,
            exclude=frozenset(self._broken) | _distrusted(self._network),
            only_peers=self._rules.only_peers,
        )

    async def close(self, *, clean: bool) -> None:
        if self._events is not None:
            self._events.close()  # listeners still reading end with their streams
        self._network.in_chain.subtract(self._resting)
        self._resting = []
        for link in self.links:
            await link.close(clean=clean)


async def silent_peers(host: PeerHost, peer_ids: list[PeerId]) -> set[PeerId]:
    """After a stall: the peers that no longer answer at all (hung, or gone without
    closing their connection), by a manifest query each. A stall nobody is found guilty
    of is replayed on the same stages."""
    silent: set[PeerId] = set()

    async def ask(peer_id: PeerId) -> None:
        try:
            await fetch_manifests(host, peer_id, include_known=False, timeout=STALL_PROBE_S)
        except (PeerError, MalformedMessage):
            silent.add(peer_id)

    async with trio.open_nursery() as nursery:
        for peer_id in peer_ids:
            nursery.start_soon(ask, peer_id)
    return silent


async def _listen(k: int, link: StageLink, events: trio.MemorySendChannel[_Event]) -> None:
    """Pass on what stage k's stream brings until it ends, fails or nobody listens."""
    async with events:
        while True:
            event: ShardSampled | None | Exception
            try:
                event = await link.receive()
            except Exception as exc:  # whatever broke, the chain must hear of it, not the network
                event = exc if isinstance(exc, PeerError | MalformedMessage) else PeerError(repr(exc))
            try:
                await events.send((k, event))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the chain was closed or replaced
            if not isinstance(event, ShardSampled):
                return


async def run_chain(
    network: Network,
    plan: ChainPlan,
    params: GenerationParams,
    *,
    dtype: HiddenDType = "f32",
    rules: StageRules = StageRules(),
    records: Records | None = None,
    deadline: float = math.inf,
) -> AsyncGenerator[TokenFrame | ChainResult, None]:
    """Yield each completion token frame as it is released, then one ChainResult.

    Replacement chains keep to `rules`; stages at fault and which stages produced which
    tokens go to `records`; AnswerTimedOut once the trio clock passes `deadline`.
    """
    records = Records(network) if records is None else records
    chain = Chain(network, plan, params, dtype, rules=rules, records=records)
    clean = False
    try:
        prompt = await _by(deadline, chain.begin)
        next_index, count = 0, 0
        while True:
            sampled = await _by(deadline, chain.next_sampled)
            records.produced_by(tuple(link.peer_id for link in chain.links), next_index)
            for frame in sampled.frames:
                if frame.index >= next_index:  # a replayed chain repeats what was sent
                    next_index = frame.index + 1
                    count += 1
                    yield frame
            if sampled.finish_reason is not None:
                clean = True
                check = await chain.check()
                yield ChainResult(
                    plan.model_id,
                    plan.model_hash,
                    Usage(prompt_tokens=len(prompt), completion_tokens=count),
                    sampled.finish_reason,
                    tuple(link.peer_id for link in chain.links),
                    tuple(chain.tried),
                    check,
                )
                return
    finally:
        await chain.close(clean=clean)


async def _by(deadline: float, step: Callable[[], Awaitable[_T]]) -> _T:
    """`step()`, or AnswerTimedOut if it is not done when the trio clock reaches `deadline`."""
    with trio.move_on_at(deadline):
        return await step()
    raise AnswerTimedOut("no complete answer in the time allowed")
