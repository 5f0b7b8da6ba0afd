"""Having an answer checked by other peers (`/dinet/verify/1`), and judging their scores.

    verification = await verify_answer(network, params, token_ids, model_hash, exclude={answerer})
    verification = await verify_answer(..., independent=2)  # a producer on probation

Verifiers are chosen among the peers serving the same model hash, never one that
produced the answer nor one this client excludes, apart from the producers and from
each other first (other address prefixes, then other regions: `dinet.trust.apart`),
by routing within that. One that fails (unreachable, busy, a malformed reply) is
replaced by the next; with nobody left the outcome is `verified=None`.

With `independent=k`, k verifiers judge the answer. If their verdicts split, more are
asked, one at a time, until one verdict holds a strict majority: that is the outcome,
and each verifier on the other side is `overruled` (the caller penalises it like a
liar). A split nobody is left to decide is `verified=False` and `disputed`: the answer
is not accepted, and nobody is blamed. The judgement itself is
`dinet.trust.verify.judge`, on this client.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import trio

from dinet.client.network import Network
from dinet.errors import MalformedMessage, PeerError, PeerStalled, RemoteError
from dinet.p2p.streams import open_framed
from dinet.routing.select import rank_peers
from dinet.trust.apart import Place, apart_first, place_of
from dinet.trust.verify import DEFAULT_TOLERANCES, Tolerances, Verdict, judge
from dinet.wire.ids import VERIFY_PROTOCOL, ModelHash, PeerId, RequestId
from dinet.wire.messages import ErrorFrame, GenerationParams
from dinet.wire.verify import ScoresFrame, VerifyRequest, decode_verify_reply

logger = logging.getLogger(__name__)

VERIFY_SILENCE_S = 30.0  # a verifier silent this long (no scores, no queued frame) is given up
MAX_VERIFIERS_TRIED = 3  # failing verifiers tried for one verdict before giving up
MAX_VERDICTS = 5  # most verifiers that judge one answer (a split is decided within them)


@dataclass(frozen=True)
class Verification:
    """The outcome of checking one answer. `verified` is None when no peer could check it.

    `verifier` is the first verifier on the deciding side (its verdict's details are
    given); `verifiers` are all that judged; `overruled` those the majority outvoted."""

    verified: bool | None
    verifier: PeerId | None
    bad_positions: tuple[int, ...] = ()
    checked: int = 0
    worst_margin: float = 0.0
    scoring_ms: float = 0.0  # the verifier's own scoring time
    error: str | None = None
    verifiers: tuple[PeerId, ...] = ()
    overruled: tuple[PeerId, ...] = ()
    disputed: bool = False  # verdicts split and nobody was left to decide: nobody is blamed

    def as_json(self) -> dict[str, object]:
        return {
            "verified": self.verified, "verifier": self.verifier,
            "bad_positions": list(self.bad_positions), "checked": self.checked,
            "worst_margin": round(self.worst_margin, 4), "scoring_ms": round(self.scoring_ms, 2),
            "error": self.error, "verifiers": list(self.verifiers), "overruled": list(self.overruled),
            "disputed": self.disputed,
        }  # fmt: skip


@dataclass(frozen=True)
class _Judged:
    peer_id: PeerId
    verdict: Verdict
    scoring_ms: float


async def verify_answer(
    network: Network,
    params: GenerationParams,
    token_ids: list[int],
    model_hash: ModelHash,
    *,
    exclude: Collection[PeerId] = (),
    verifiers: Collection[PeerId] | None = None,
    tolerances: Tolerances = DEFAULT_TOLERANCES,
    claimed_logprobs: Sequence[float | None] | None = None,
    independent: int = 1,
) -> Verification:
    """Have `token_ids` (a completion of `params`) re-scored by `independent` peers not in
    `exclude` (the producers), and more if their verdicts split.

    `verifiers`, if given, limits the choice to those peers. `claimed_logprobs` (one per
    token, None where not claimed) are the log-probabilities the answering peers sent:
    they are checked against the verifier's too.
    """
    if not token_ids:
        return Verification(verified=True, verifier=None)  # nothing was claimed
    claim = VerifyRequest(
        request_id=RequestId(uuid.uuid4().hex),
        model_hash=model_hash,
        params=params.model_copy(update={"prefix_tokens": ()}),
        tokens=tuple(token_ids),
    )
    serving = network.candidates(None, model_hash, tools=params.uses_tools)
    candidates = rank_peers(
        [
            p for p in network.trusted(serving)  # never a known liar
            if p.peer_id not in exclude and (verifiers is None or p.peer_id in verifiers)
        ],
        len(token_ids),
        "latency",
    )  # fmt: skip
    taken = [_place(network, p) for p in exclude]
    judged: list[_Judged] = []
    last_error = f"no other peer serves {model_hash[:16]}"

    async def one_more() -> bool:
        """One more verdict, from the peer farthest from every place taken; False if none."""
        nonlocal last_error
        apart = apart_first(candidates, lambda v: _place(network, v.peer_id), taken)
        for peer in apart[:MAX_VERIFIERS_TRIED]:
            candidates.remove(peer)
            try:
                scores = await request_scores(network, peer.peer_id, claim)
            except (PeerError, MalformedMessage) as exc:
                logger.info("verifier %s failed: %s", peer.peer_id, exc)
                last_error = f"{peer.peer_id}: {exc}"
                continue
            verdict = judge(
                scores.positions,
                temperature=params.temperature,
                top_p=params.top_p,
                seed=params.seed,
                tolerances=tolerances,
                claimed_logprobs=claimed_logprobs,
            )
            judged.append(_Judged(peer.peer_id, verdict, scores.elapsed_ms))
            taken.append(_place(network, peer.peer_id))
            return True
        return False

    while len(judged) < max(1, independent) and await one_more():
        pass
    if not judged:
        return Verification(verified=None, verifier=None, error=last_error)
    while _majority(judged) is None and len(judged) < MAX_VERDICTS and await one_more():
        pass
    return _outcome(judged, last_error)


def _majority(judged: list[_Judged]) -> bool | None:
    """The verdict more than half of the verifiers gave (True: the answer passed), if any."""
    passed = sum(j.verdict.ok for j in judged)
    if 2 * passed > len(judged):
        return True
    if 2 * (len(judged) - passed) > len(judged):
        return False
    return None


def _outcome(judged: list[_Judged], last_error: str) -> Verification:
    everyone = tuple(j.peer_id for j in judged)
    decided = _majority(judged)
    if decided is None:
        passed = [j.peer_id for j in judged if j.verdict.ok]
        return Verification(
            verified=False,
            verifier=None,
            error=f"verifiers split ({len(passed)} of {len(judged)} passed it) and nobody else "
            f"could decide; last error: {last_error}",
            verifiers=everyone,
            disputed=True,
        )
    winner = next(j for j in judged if j.verdict.ok == decided)
    return Verification(
        verified=decided,
        verifier=winner.peer_id,
        bad_positions=winner.verdict.bad_positions,
        checked=winner.verdict.checked,
        worst_margin=winner.verdict.worst_margin,
        scoring_ms=winner.scoring_ms,
        verifiers=everyone,
        overruled=tuple(j.peer_id for j in judged if j.verdict.ok != decided),
    )


def _place(network: Network, peer_id: PeerId) -> Place:
    """Where the peer sits by its manifest (addresses and region); nowhere known if unknown."""
    manifest = network.directory.get(peer_id)
    return Place() if manifest is None else place_of(manifest.addrs, manifest.region)


async def request_scores(network: Network, peer_id: PeerId, claim: VerifyRequest) -> ScoresFrame:
    """`peer_id`'s scores for `claim`. RemoteError if it refuses (`unknown_model`,
    `bad_request`, `busy`...), MalformedMessage if its reply does not fit the claim,
    another PeerError if it cannot be reached or goes silent."""
    framed = await open_framed(network.host, peer_id, VERIFY_PROTOCOL, 5.0)
    try:
        await framed.send(claim)
        while True:
            # A queued request hears from the verifier every second: only silence counts.
            with trio.move_on_after(VERIFY_SILENCE_S):
                payload = await framed.receive()
                if payload is None:
                    raise PeerError(f"{peer_id} closed the stream without scores")
                frame = decode_verify_reply(payload)
                if isinstance(frame, ScoresFrame):
                    return _checked(frame, claim)
                if isinstance(frame, ErrorFrame):
                    raise RemoteError(frame.code, frame.message)
                continue  # queued
            raise PeerStalled(f"{peer_id} sent nothing for {VERIFY_SILENCE_S:g} s")
    finally:
        with trio.CancelScope(shield=True):
            await framed.close()


def _checked(scores: ScoresFrame, claim: VerifyRequest) -> ScoresFrame:
    """Scores that answer exactly this claim, or MalformedMessage."""
    if scores.model_hash != claim.model_hash:
        raise MalformedMessage(f"scores for model {scores.model_hash[:16]}, asked {claim.model_hash[:16]}")
    if [(p.index, p.token_id) for p in scores.positions] != list(enumerate(claim.tokens)):
        raise MalformedMessage("scores that do not match the claimed tokens one for one")
    return scores
