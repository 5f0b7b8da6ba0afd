"""Asking k peers at once and keeping the majority's answer.

`ask_replicas` sends one request to `replicas` distinct peers concurrently (the best
ones by routing, none excluded for a low reputation), each kept on its own peer (no
failover onto another replica), and compares their token sequences
(`dinet.trust.vote`). Outcomes go to the reputation book: the majority's peers agreed,
the others dissented.

Honest peers can split where llama.cpp's floating-point noise meets a near-tie (other
thread counts or CPUs). So verification by re-scoring (`dinet.client.verify`) decides
what a vote cannot: a dissenter is checked before it is punished (a pass is an honest
near-tie), and when no majority exists each distinct answer is checked and the
best-supported one that passes is returned. Where no peer can check (`verify=False`,
or nobody else serves the model), a dissent counts against the peer and no majority
means no answer (`Vote.answer` is None).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

import trio

from dinet.client.ask import Answer, ask
from dinet.client.network import Network
from dinet.client.options import AskOptions
from dinet.client.verify import verify_answer
from dinet.errors import DinetError, NoCapablePeer, RequestError
from dinet.routing.select import PeerView, rank_peers, within_budget
from dinet.trust.reputation import Event
from dinet.trust.vote import Ballot, Group, Tally, tally
from dinet.wire.ids import ModelHash, PeerId
from dinet.wire.messages import GenerationParams, TokenFrame

logger = logging.getLogger(__name__)

# Whether the completion tokens that these peers gave are a plausible answer under the
# model (checked by another peer): True passes, False fails, None could not be checked.
Check = Callable[[tuple[PeerId, ...], tuple[int, ...]], Awaitable[bool | None]]
Decision = Literal["majority", "verification"]
MAX_REPLICAS = 9


@dataclass(frozen=True)
class Vote:
    answer: Answer | None  # the decided answer, None when nothing could decide
    decided_by: Decision | None
    asked: tuple[PeerId, ...]  # the replicas' peers
    agreeing: tuple[PeerId, ...]  # gave the decided answer
    dissenting: tuple[PeerId, ...]  # answered something else, and were counted against
    failed: dict[PeerId, str]  # peer -> why it gave no complete answer
    tally: Tally
    answers: dict[PeerId, Answer] = field(default_factory=dict)
    verified: dict[PeerId, bool] = field(default_factory=dict)  # peer -> its answer passed a check
    frames: tuple[TokenFrame, ...] = ()  # the decided answer's tokens, as its peer sent them

    @property
    def distinct_answers(self) -> int:
        return len(self.tally.groups)

    def summary(self) -> dict[str, object]:
        """The vote as JSON (`din ask --json`, the gateway's `dinet.vote`)."""
        return {
            "replicas": len(self.asked),
            "majority": self.tally.winner is not None,
            "decided_by": self.decided_by,
            "agreeing": list(self.agreeing),
            "dissenting": list(self.dissenting),
            "failed": dict(self.failed),
            "distinct_answers": self.distinct_answers,
            "agreed_prefix_tokens": self.tally.agreed_prefix,
            "verified": dict(self.verified),
            "answers": {p: a.text for p, a in sorted(self.answers.items())},
        }

    def explain(self) -> str:
        """One line for people: how the answer was decided, or why none was."""
        n = len(self.asked)
        if self.answer is None:
            return (
                f"no majority among {n} replicas: {len(self.answers)} answered, "
                f"{self.distinct_answers} distinct answers, agreeing on the first "
                f"{self.tally.agreed_prefix} tokens" + _failures(self.failed)
            )
        how = (
            f"agreed by {len(self.agreeing)} of {n} replicas"
            if self.decided_by == "majority"
            else f"no majority among {n} replicas; decided by verification"
        )
        dissent = f"; dissenting: {', '.join(self.dissenting)}" if self.dissenting else ""
        return how + dissent + _failures(self.failed)


def _failures(failed: dict[PeerId, str]) -> str:
    return f"; failed: {', '.join(failed)}" if failed else ""


async def ask_replicas(
    network: Network,
    params: GenerationParams,
    replicas: int,
    options: AskOptions | None = None,
    *,
    verify: bool = True,
    check: Check | None = None,
) -> Vote:
    """Ask `replicas` distinct peers (at least 2 must be available) and vote.

    With `verify`, dissenters and (without a majority) every distinct answer are
    re-scored by another peer (`check` replaces that check). With
    `options.only_peers`, the replicas are chosen from those peers only. Replicas are
    whole-model peers: RequestError for `sharded=True` or a deadline.
    """
    options = AskOptions() if options is None else options
    if not 2 <= replicas <= MAX_REPLICAS:
        raise RequestError(f"a vote takes 2 to {MAX_REPLICAS} replicas", "replicas")
    if options.sharded:
        raise RequestError("a vote compares whole-model peers: it cannot be sharded", "sharded")
    if options.deadline_s is not None:
        raise RequestError("a vote cannot be combined with a deadline", "deadline_s")
    model_id, model_hash = options.model_id, options.model_hash
    max_price = network.max_price if options.max_price is None else options.max_price
    tools = params.uses_tools
    await network.discover(
        model_id, model_hash, timeout=options.discover_timeout_s, want=replicas, tools=tools
    )
    capable = network.candidates(model_id, model_hash, tools=tools)
    if options.only_peers is not None:
        capable = [p for p in capable if p.peer_id in options.only_peers]
    usable = network.trusted(within_budget(capable, max_price))
    if model_hash is None:  # replicas must all run one version, or honest peers differ
        model_hash, usable = _one_version(network, usable, model_id, tools)
    ranked = rank_peers(usable, params.max_tokens, options.policy, region=options.region, limit=replicas)
    chosen = [p.peer_id for p in ranked]
    if len(chosen) < 2:
        wanted = model_hash or model_id or "the model"
        raise NoCapablePeer(f"a vote needs 2 peers serving {wanted}; {len(chosen)} usable")
    # Each replica stays on its peer, and the vote does its own checking.
    # The vote compares the replicas (and re-scores dissent): no replica is checked on its own.
    replica = options.with_(
        model_hash=model_hash, max_price=max_price, sharded=False, verify_rate=0.0, probation_good=0.0
    )
    answers: dict[PeerId, tuple[Answer, tuple[TokenFrame, ...]]] = {}
    failed: dict[PeerId, str] = {}

    async def one(peer_id: PeerId) -> None:
        frames: list[TokenFrame] = []
        try:
            async for event in ask(network, params, replica.with_(only_peers=frozenset({peer_id}))):
                if isinstance(event, TokenFrame):
                    frames.append(event)
                else:
                    answers[peer_id] = (event, tuple(frames))
        except DinetError as exc:
            failed[peer_id] = str(exc)

    async with trio.open_nursery() as nursery:
        for peer_id in chosen:
            nursery.start_soon(one, peer_id)
    ballots = [Ballot(p, tuple(f.token_id for f in frames)) for p, (_, frames) in answers.items()]
    result = tally(ballots, asked=len(chosen))
    if check is None and verify and model_hash is not None:
        check = _verification(network, params, model_hash, result.winner)
    decided = await _decide(result, check)
    await network.note_all(decided.events)
    winner = decided.group
    answer, frames = (None, ()) if winner is None else answers[winner.peers[0]]
    return Vote(
        answer=answer,
        decided_by=decided.by,
        asked=tuple(chosen),
        agreeing=() if winner is None else winner.peers,
        dissenting=decided.dissenting,
        failed=failed,
        tally=result,
        answers={p: a for p, (a, _) in answers.items()},
        verified=decided.verified,
        frames=frames,
    )


def _verification(
    network: Network, params: GenerationParams, model_hash: ModelHash, winner: Group | None
) -> Check:
    """Re-scoring by a peer that did not give the answer checked, and not a known liar.

    A dissent is checked by the majority's peers (they showed they run the model
    faithfully on this very request); with no majority, by any other peer.
    """

    async def check(peers: tuple[PeerId, ...], tokens: tuple[int, ...]) -> bool | None:
        verifiers = None if winner is None else set(winner.peers) - set(peers)
        outcome = await verify_answer(
            network, params, list(tokens), model_hash, exclude=set(peers), verifiers=verifiers
        )
        if outcome.verified is None:
            logger.info("could not verify the answer of %s: %s", ", ".join(peers), outcome.error)
        return outcome.verified

    return check


def _one_version(
    network: Network, peers: list[PeerView], model_id: str | None, tools: bool
) -> tuple[ModelHash | None, list[PeerView]]:
    """The model hash most of `peers` serve (ties: the lowest), and those peers; with
    `tools`, among versions that declare tool support."""
    by_hash: dict[ModelHash, list[PeerView]] = {}
    for peer in peers:
        manifest = network.directory.get(peer.peer_id)
        for offer in manifest.models if manifest is not None else ():
            if (model_id is None or offer.model_id == model_id) and (offer.tools or not tools):
                by_hash.setdefault(offer.model_hash, []).append(peer)
    if not by_hash:
        return None, []
    best = min(by_hash, key=lambda h: (-len(by_hash[h]), h))
    return best, by_hash[best]


@dataclass
class _Decided:
    group: Group | None = None
    by: Decision | None = None
    dissenting: tuple[PeerId, ...] = ()
    verified: dict[PeerId, bool] = field(default_factory=dict)
    events: list[tuple[PeerId, Event]] = field(default_factory=list)


async def _decide(result: Tally, check: Check | None) -> _Decided:
    """Which answer stands, and what each replica's peer earned by its own."""
    decided = _Decided()
    winner = result.winner
    if winner is not None:
        decided.group, decided.by = winner, "majority"
        decided.events += [(p, Event.VOTE_AGREE) for p in winner.peers]
        dissenting: list[PeerId] = []
        for group in result.groups[1:]:
            passed = await _check_group(group, check, decided)
            if passed is None:  # nothing else to go on: the majority's word stands
                decided.events += [(p, Event.VOTE_DISSENT) for p in group.peers]
            if not passed:  # a pass is an honest near-tie, not a dissent
                dissenting += group.peers
        decided.dissenting = tuple(dissenting)
        return decided
    if check is None:
        logger.warning(
            "no majority among %d replicas (%d distinct answers)", result.asked, len(result.groups)
        )
        return decided
    for group in result.groups:  # most supported first
        passed = await _check_group(group, check, decided)
        if passed and decided.group is None:
            decided.group, decided.by = group, "verification"
    if decided.group is not None:
        decided.dissenting = tuple(p for p, ok in decided.verified.items() if not ok)
    return decided


async def _check_group(group: Group, check: Check | None, decided: _Decided) -> bool | None:
    """Re-score one distinct answer: a verification outcome for each peer that gave it."""
    if check is None:
        return None
    passed = await check(group.peers, group.tokens)
    if passed is None:
        return None
    event = Event.VERIFY_PASS if passed else Event.VERIFY_FAIL
    decided.events += [(p, event) for p in group.peers]
    decided.verified.update({p: passed for p in group.peers})
    return passed
