"""Having an answer checked by another peer (`/dinet/verify/1`), and judging its scores.

    verification = await verify_answer(network, params, token_ids, model_hash, exclude={answerer})

The verifier is chosen by routing among the peers serving the same model hash,
never one that produced the answer. If it fails (unreachable, busy, a malformed
reply), the next one is tried; with nobody left the outcome is `verified=None`.
The judgement itself is `dinet.trust.verify.judge`, on this client.
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
from dinet.trust.verify import DEFAULT_TOLERANCES, Tolerances, judge
from dinet.wire.ids import VERIFY_PROTOCOL, ModelHash, PeerId, RequestId
from dinet.wire.messages import ErrorFrame, GenerationParams
from dinet.wire.verify import ScoresFrame, VerifyRequest, decode_verify_reply

logger = logging.getLogger(__name__)

VERIFY_SILENCE_S = 30.0  # a verifier silent this long (no scores, no queued frame) is given up
MAX_VERIFIERS_TRIED = 3


@dataclass(frozen=True)
class Verification:
    """The outcome of checking one answer. `verified` is None when no peer could check it."""

    verified: bool | None
    verifier: PeerId | None
    bad_positions: tuple[int, ...] = ()
    checked: int = 0
    worst_margin: float = 0.0
    scoring_ms: float = 0.0  # the verifier's own scoring time
    error: str | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "verified": self.verified, "verifier": self.verifier,
            "bad_positions": list(self.bad_positions), "checked": self.checked,
            "worst_margin": round(self.worst_margin, 4), "scoring_ms": round(self.scoring_ms, 2),
            "error": self.error,
        }  # fmt: skip


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
) -> Verification:
    """Have `token_ids` (a completion of `params`) re-scored by a peer not in `exclude`.

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
    candidates = [
        p for p in network.trusted(network.candidates(None, model_hash))  # never a known liar
        if p.peer_id not in exclude and (verifiers is None or p.peer_id in verifiers)
    ]  # fmt: skip
    last_error = f"no other peer serves {model_hash[:16]}"
    for peer in rank_peers(candidates, len(token_ids), "latency", limit=MAX_VERIFIERS_TRIED):
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
        return Verification(
            verified=verdict.ok,
            verifier=peer.peer_id,
            bad_positions=verdict.bad_positions,
            checked=verdict.checked,
            worst_margin=verdict.worst_margin,
            scoring_ms=scores.elapsed_ms,
        )
    return Verification(verified=None, verifier=None, error=last_error)


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
