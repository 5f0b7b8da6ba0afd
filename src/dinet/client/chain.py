"""Asking through a chain of pipeline stages, with failover inside the chain.

The client drives the chain token by token: the prompt's ids go to the first stage in
one or more prefill steps, each stage's hidden states to the next, and the last
stage's chosen token back to the first as the next step. Every stage keeps one stream
for the whole session.

The client records every input it sent into each layer boundary (ids at block 0,
hidden states at the others), in the chunks it sent them. When a stage dies, stalls
or loses its session, a new chain is planned for the missing blocks from the peers
still alive, the recorded inputs are replayed into it step by step (the same chunks,
so its KV caches are rebuilt exactly) and the chain goes on; the text is unchanged.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import numpy as np
import trio

from dinet.client._stage_link import StageLink, Tensor
from dinet.client.network import Network
from dinet.errors import (
    MalformedMessage,
    NoCapablePeer,
    PeerError,
    RemoteError,
    RoutingError,
    first_dinet_error,
)
from dinet.routing.shard import Route, StageOffer, plan_shard_route
from dinet.wire.messages import GenerationParams, TokenFrame, Usage
from dinet.wire.shard import HiddenDType, ShardSampled, rows_per_frame

logger = logging.getLogger(__name__)

PREFILL_ROWS = 256  # prompt tokens per prefill step
MAX_REPAIRS = 8  # stage replacements in one answer before giving up
_REPLAYABLE = {"unknown_session", "internal", "busy", "rate_limited"}  # same peer may do


@dataclass(frozen=True)
class ChainPlan:
    route: Route
    model_id: str
    model_hash: str
    n_layers: int


@dataclass(frozen=True)
class ChainResult:
    """What an Answer needs from a finished chain."""

    model_id: str
    model_hash: str
    usage: Usage
    finish_reason: str
    chain: tuple[str, ...]  # the peers of the final chain, in order
    peers_tried: tuple[str, ...]  # every stage peer used, replacements included


async def plan_chain(
    network: Network, model_id: str | None, model_hash: str | None, *, timeout: float,
    exclude: frozenset[str] = frozenset(),
) -> ChainPlan:
    """Look for stages until some chain covers the model, or NoCapablePeer after `timeout`."""
    last: RoutingError | None = None
    with trio.move_on_after(timeout):
        while True:
            unprobed = [m for m in network.directory.manifests() if m.peer_id not in network.rtt_ms]
            await network.probe_all(unprobed)
            try:
                return _plan(network, model_id, model_hash, exclude)
            except RoutingError as exc:
                last = exc
            await trio.sleep(0.3)
    wanted = model_hash or model_id or "the model"
    raise NoCapablePeer(f"no chain of stages serves {wanted}" + (f": {last}" if last else ""))


def _plan(
    network: Network, model_id: str | None, model_hash: str | None, exclude: frozenset[str]
) -> ChainPlan:
    groups: dict[tuple[str, str, int], list[StageOffer]] = defaultdict(list)
    for offer, stage in network.stage_offers(model_id, model_hash):
        groups[(offer.model_hash, offer.model_id, offer.total_layers)].append(stage)
    if not groups:
        raise RoutingError("no stage serves the model")
    failures = []
    for (found_hash, found_id, n_layers), stages in sorted(groups.items()):  # deterministic order
        try:
            route = plan_shard_route(stages, n_layers, exclude=exclude)
            return ChainPlan(route, found_id, found_hash, n_layers)
        except RoutingError as exc:
            failures.append(str(exc))
    raise RoutingError("; ".join(failures))


class Chain:
    """One session across a chain of stages, able to replace any of them mid-answer."""

    def __init__(
        self, network: Network, plan: ChainPlan, params: GenerationParams, dtype: HiddenDType
    ) -> None:
        self._network = network
        self._plan = plan
        self._params = params
        self._dtype = dtype
        self.links: list[StageLink] = []
        self.tried: list[str] = []
        self._inputs: dict[int, list[tuple[Tensor, bool]]] = defaultdict(list)  # boundary -> steps
        self._broken: set[str] = set()
        self._repairs = 0
        self.replayed: list[ShardSampled] = []  # sampled replies produced while replaying

    @property
    def repairs(self) -> int:
        """Stage replacements (and session replays) so far in this answer."""
        return self._repairs

    async def open(self) -> tuple[int, ...]:
        """Open every stage; the prompt's token ids (from the first stage)."""
        self.links = await self._open_all(list(self._plan.route.stages))
        return self.links[0].prompt_ids

    async def _open_all(self, offers: list[StageOffer]) -> list[StageLink]:
        links: list[StageLink | None] = [None] * len(offers)

        async def open_one(i: int) -> None:
            self.tried.append(offers[i].peer_id)
            links[i] = await StageLink.open(
                self._network.host, offers[i], self._plan.model_hash, self._params, self._dtype
            )

        try:
            async with trio.open_nursery() as nursery:
                for i in range(len(offers)):
                    nursery.start_soon(open_one, i)
        except BaseException as exc:
            for link in links:
                if link is not None:
                    await link.close(clean=False)
            ours = first_dinet_error(exc)  # one stage's failure, not trio's group of them
            if ours is not None and not isinstance(exc, trio.Cancelled):
                raise ours from None
            raise
        return [link for link in links if link is not None]

    async def step(self, x: Tensor, *, sample: bool) -> ShardSampled | None:
        """Run one step through the whole chain, repairing it as needed."""
        k = 0
        out: Tensor | ShardSampled | None = x
        while k < len(self.links):
            link = self.links[k]
            assert out is not None and not isinstance(out, ShardSampled)
            recorded = self._inputs[link.offer.start]
            if len(recorded) == link.steps:
                recorded.append((out, sample))
            try:
                out = await link.step(out, sample=sample)
                k += 1
            except (PeerError, MalformedMessage) as exc:
                out, k = await self._repair(k, exc)
        assert out is None or isinstance(out, ShardSampled)
        return out

    async def _repair(self, k: int, cause: Exception) -> tuple[Tensor | ShardSampled | None, int]:
        """Replace stage k (and whatever else the new plan needs) and replay its steps.

        Returns the output at the replaced span's end for the current step, and the
        index of the next stage to run.
        """
        failed = self.links[k]
        start, stop = failed.offer.start, failed.offer.stop
        # After a lost session the same peer may serve again; otherwise it is out.
        same_peer_ok = isinstance(cause, RemoteError) and cause.code in _REPLAYABLE
        culprits = set() if same_peer_ok else {failed.peer_id}
        await failed.close(clean=False)
        while True:
            self._repairs += 1
            if self._repairs > MAX_REPAIRS:
                raise NoCapablePeer(f"the chain failed {MAX_REPAIRS} times; last: {cause}")
            for peer_id in culprits:
                self._broken.add(peer_id)
                self._network.health.failed(peer_id, trio.current_time())
            logger.info("stage [%d, %d) failed (%s); replacing it", start, stop, cause)
            try:
                route = plan_shard_route(
                    [s for _, s in self._network.stage_offers(self._plan.model_id, self._plan.model_hash)],
                    self._plan.n_layers, start=start, stop=stop, exclude=frozenset(self._broken),
                )
            except RoutingError as exc:
                raise NoCapablePeer(f"no spare stage for blocks [{start}, {stop}): {exc}") from None
            replacement: list[StageLink] = []
            try:
                replacement = await self._open_all(list(route.stages))
                out = await self._replay(replacement, start)
            except (PeerError, MalformedMessage) as exc:
                for link in replacement:
                    await link.close(clean=False)
                # Which of them failed is not known for sure: none of them is asked again.
                cause, culprits = exc, set(route.peers)
                continue
            self.links[k : k + 1] = replacement
            return out, k + len(replacement)

    async def _replay(self, links: list[StageLink], start: int) -> Tensor | ShardSampled | None:
        """Feed every recorded input at `start` through `links`; the last step's output."""
        out: Tensor | ShardSampled | None = None
        for x, sample in list(self._inputs[start]):
            out = x
            for link in links:
                assert out is not None and not isinstance(out, ShardSampled)
                recorded = self._inputs[link.offer.start]
                if link.offer.start != start and len(recorded) == link.steps:
                    recorded.append((out, sample))
                out = await link.step(out, sample=sample)
            if isinstance(out, ShardSampled):
                self.replayed.append(out)
        return out

    async def close(self, *, clean: bool) -> None:
        for link in self.links:
            await link.close(clean=clean)


async def run_chain(
    network: Network, plan: ChainPlan, params: GenerationParams, *, dtype: HiddenDType = "f32",
) -> AsyncGenerator[TokenFrame | ChainResult, None]:
    """Yield each completion token frame as it is released, then one ChainResult."""
    chain = Chain(network, plan, params, dtype)
    clean = False
    try:
        prompt = await chain.open()
        ids = np.asarray(prompt, dtype=np.int32).reshape(-1, 1)  # (T, 1)
        rows = min(PREFILL_ROWS, rows_per_frame(chain.links[0].n_embd, dtype))
        chunks = [ids[i : i + rows] for i in range(0, len(ids), rows)]
        next_index, count = 0, 0
        reply: ShardSampled | None = None
        for i, chunk in enumerate(chunks):
            reply = await chain.step(chunk, sample=i == len(chunks) - 1)
        while True:
            assert reply is not None
            sampled = [*chain.replayed, reply]
            chain.replayed.clear()
            for frame in (f for s in sampled for f in s.frames):
                if frame.index >= next_index:  # a replayed last stage repeats what was sent
                    next_index = frame.index + 1
                    count += 1
                    yield frame
            if reply.finish_reason is not None:
                clean = True
                yield ChainResult(
                    plan.model_id, plan.model_hash,
                    Usage(prompt_tokens=len(prompt), completion_tokens=count),
                    reply.finish_reason, tuple(link.peer_id for link in chain.links), tuple(chain.tried),
                )
                return
            reply = await chain.step(np.array([[reply.token_id]], dtype=np.int32), sample=True)
    finally:
        await chain.close(clean=clean)

