"""Checking a chain's stages after its answer: their receipts, and audits by replay.

Every chain session is opened checked (`nonce`, `audit_commit` in `shard_open`). When
the answer is complete the client asks each stage for its signed receipt and refuses
the set unless each is signed by its stage for this request and the blocks it was
asked for, the spans tile the model, every stage took in what the one before sent
out, the first took in the prompt the client sent and the last chose the tokens the
client received (`dinet.wire.stage_receipt`).

Receipts cannot show a stage that computed its blocks wrongly: it signs what it sent.
An audit can. The seed committed at open decides (with the request's audit rate)
whether the answer is audited; if it is, each stage whose own receipt holds reveals
every step it took, the client checks the reveal against the receipt and replays the
steps on other holders of the same blocks (in random order, up to MAX_AUDITORS), step
by step, comparing hidden states within AUDIT_TOLERANCE and chosen tokens exactly: one
holder that agrees clears the stage, two that part from it in the same way catch it (a
lying auditor alone flags nobody). A stage caught is reported to reputation as a liar;
one cleared earns a pass. A stage with no other holder of its blocks cannot be audited:
said in the outcome.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import trio

from dinet.client._stage_link import StageLink, next_reply
from dinet.client.network import Network
from dinet.errors import BadReceipt, MalformedMessage, PeerError, RemoteError
from dinet.p2p.streams import FramedStream, open_framed
from dinet.trust.reputation import Event
from dinet.wire.ids import SHARD_PROTOCOL, ModelHash, PeerId
from dinet.wire.messages import GenerationParams
from dinet.wire.shard import (
    HiddenDType,
    ShardAck,
    ShardHidden,
    ShardOpen,
    ShardOpened,
    ShardReceipt,
    ShardReceiptQuery,
    ShardReplies,
    ShardReveal,
    ShardRevealed,
    ShardSampled,
    ShardStep,
    decode_tensor,
    tensor_frames,
)
from dinet.wire.stage_receipt import (
    StageReceiptBody,
    audit_commitment,
    check_chaining,
    check_tiling,
    open_stage_receipt,
    step_digest,
)

logger = logging.getLogger(__name__)

# An honest replay on another holder may differ by rounding (other threads, other
# kernels); a lie of any use changes far more. Largest difference allowed, per RMS of
# the rows. On this machine honest replays were bit for bit the same (f32 and f16; 183
# honest stages in bench/stage_liars.py); across different CPUs it is not measured. A
# stage adding noise of 0.2 RMS differed by 0.6-0.9 RMS.
AUDIT_TOLERANCE = 0.05
RECEIPT_WAIT_S = 10.0
AUDIT_WAIT_S = 120.0  # a replay of the whole session on a busy holder
MAX_AUDITORS = 3  # holders asked to replay one stage, until one agrees or two part from it alike
# Bytes a stage may reveal for one session: an honest one at a 2,048-token context sends
# ~10 MB (every position's hidden state in and out, f32); far beyond it is a flood.
MAX_REVEAL_BYTES = 256 << 20


@dataclass(frozen=True)
class CheckTicket:
    """A chain session's check, fixed before any stage answers: the request's nonce and
    the audit seed (its sha256 is given to every stage)."""

    nonce: str
    seed: bytes
    audit: bool

    @classmethod
    def new(cls, audit_rate: float) -> CheckTicket:
        seed = os.urandom(16)
        draw = int.from_bytes(hashlib.sha256(b"audit?" + seed).digest()[:8], "big") / 2**64
        return cls(uuid.uuid4().hex, seed, draw < audit_rate)

    @property
    def commit(self) -> str:
        return audit_commitment(self.seed)


@dataclass(frozen=True)
class StageCheck:
    """What the client learnt of a chain's stages after the answer."""

    receipts_ok: bool  # every receipt signed, for this request, tiling the blocks and chaining
    audited: tuple[PeerId, ...] = ()  # stages replayed on another holder that agreed
    caught: tuple[PeerId, ...] = ()  # stages that lied in their receipt, their reveal or their blocks
    problems: tuple[str, ...] = ()  # what could not be checked, and why


@dataclass
class ChainLog:
    """What the client itself sent into a chain and received from it (the receipts must agree)."""

    sent: list[str] = field(default_factory=list)  # digest of each prompt chunk sent to the first stage
    chosen: dict[int, list[int]] = field(default_factory=dict)  # step -> the token ids the last stage chose

    def took(self, sampled: ShardSampled) -> None:
        self.chosen.setdefault(sampled.seq, []).append(sampled.token_id)


class _Caught(Exception):
    """A stage's own words (its receipt, its reveal) or its blocks do not hold."""

    def __init__(self, why: str, peer_id: PeerId | None = None) -> None:
        super().__init__(why)
        self.peer_id = peer_id  # the stage, where the catcher does not know it already


async def check_stages(
    network: Network,
    links: Sequence[StageLink],
    model_hash: ModelHash,
    n_layers: int,
    params: GenerationParams,
    dtype: HiddenDType,
    ticket: CheckTicket,
    log: ChainLog,
    *,
    exclude: frozenset[PeerId] = frozenset(),
    only_peers: frozenset[PeerId] | None = None,
) -> StageCheck:
    """Check the receipts of a finished chain's stages and, if the ticket says so, audit them
    on holders not in `exclude` (and in `only_peers`, if given); reputation hears of every
    stage caught and every audit passed."""
    caught: dict[PeerId, str] = {}
    problems: list[str] = []
    receipts: list[StageReceiptBody | None] = [None] * len(links)

    async def receipt_of(k: int) -> None:
        link = links[k]
        try:
            with trio.fail_after(RECEIPT_WAIT_S):
                receipts[k] = await _receipt(network, link, model_hash, ticket)
        except _Caught as exc:
            caught[link.peer_id] = str(exc)
        except (PeerError, MalformedMessage, trio.TooSlowError) as exc:
            problems.append(f"no receipt from {link.peer_id}: {exc or 'timed out'}")

    async with trio.open_nursery() as nursery:
        for k in range(len(links)):
            nursery.start_soon(receipt_of, k)
    bodies = [r for r in receipts if r is not None]
    receipts_ok = not caught and len(bodies) == len(links)
    if receipts_ok:
        try:
            _check_ends(bodies, log)
            check_tiling(bodies, n_layers)
            check_chaining(bodies)
        except _Caught as exc:
            assert exc.peer_id is not None
            receipts_ok = False
            caught[exc.peer_id] = str(exc)
        except BadReceipt as exc:  # two stages disagree on what passed between them: either may lie
            receipts_ok = False
            problems.append(str(exc))
    audited: list[PeerId] = []
    # Every stage whose own receipt holds is audited, even when the set is refused: one
    # stage's forged receipt must not hide another's wrong blocks.
    to_audit = [k for k, body in enumerate(receipts) if body is not None and links[k].peer_id not in caught]
    if ticket.audit and to_audit:
        await network.look(None, model_hash)  # fresh offers of the other holders
        auditing = [link.peer_id for link in links] + list(exclude)

        async def audit(k: int) -> None:
            body = receipts[k]
            assert body is not None
            verdict = await _audit(network, links[k], body, params, dtype, ticket, auditing, only_peers)
            if verdict is None:
                audited.append(links[k].peer_id)
            elif isinstance(verdict, _Caught):
                caught[links[k].peer_id] = str(verdict)
            else:
                problems.append(verdict)

        async with trio.open_nursery() as nursery:
            for k in to_audit:
                nursery.start_soon(audit, k)
    for peer_id, why in caught.items():
        logger.warning("stage %s caught: %s", peer_id, why)
    events = [(p, Event.VERIFY_FAIL) for p in caught] + [(p, Event.VERIFY_PASS) for p in audited]
    await network.note_all(events)
    return StageCheck(
        receipts_ok,
        tuple(audited),
        tuple(caught),
        tuple(problems) + tuple(f"{p}: {why}" for p, why in caught.items()),
    )


async def _receipt(
    network: Network, link: StageLink, model_hash: ModelHash, ticket: CheckTicket
) -> StageReceiptBody:
    framed = await open_framed(network.host, link.peer_id, SHARD_PROTOCOL, RECEIPT_WAIT_S)
    try:
        await framed.send(ShardReceiptQuery(session_id=link.session_id))
        reply = await _reply(framed, link.peer_id)
    finally:
        await framed.close()
    if not isinstance(reply, ShardReceipt):
        raise MalformedMessage(f"{link.peer_id} answered a receipt query with {reply.kind}")
    try:
        body = open_stage_receipt(reply.receipt)
    except BadReceipt as exc:
        raise _Caught(str(exc)) from None
    expected = {
        "node": link.peer_id,
        "nonce": ticket.nonce,
        "session_id": link.session_id,
        "model_hash": model_hash,
        "span": (link.offer.start, link.offer.stop),
        "audit_commit": ticket.commit,
    }
    for name, value in expected.items():
        if getattr(body, name) != value:
            raise _Caught(f"its receipt names {name} {getattr(body, name)!r}, not {value!r}")
    return body


def _check_ends(bodies: list[StageReceiptBody], log: ChainLog) -> None:
    """The first stage took in the prompt the client sent; the last chose the tokens it received."""
    first, last = bodies[0], bodies[-1]
    for seq, sent in enumerate(log.sent):
        if seq >= len(first.steps) or first.steps[seq][0] != sent:
            raise _Caught(f"its receipt's step {seq} is not the prompt the client sent", first.node)
    for seq, (_, out) in enumerate(last.steps):
        chosen = np.array(log.chosen.get(seq, []), dtype=np.int32).reshape(-1, 1)
        if out != step_digest(chosen.tobytes()):
            raise _Caught(f"its receipt's step {seq} is not the tokens the client received", last.node)


@dataclass(frozen=True)
class _Step:
    """One revealed step, checked against the stage's receipt."""

    header: ShardRevealed
    data_in: bytes
    data_out: bytes


@dataclass(frozen=True)
class _Divergence:
    """Where an auditor's replay first parts from the stage: the step, and what the
    auditor gave there (its hidden rows, or the position and id of its token)."""

    seq: int
    theirs: npt.NDArray[np.generic] | tuple[int, int] | None
    why: str

    def same_as(self, other: _Divergence) -> bool:
        """Whether two auditors found the same thing (so neither of them is lying)."""
        if self.seq != other.seq:
            return False
        if isinstance(self.theirs, np.ndarray) and isinstance(other.theirs, np.ndarray):
            return _difference(self.theirs, other.theirs) <= AUDIT_TOLERANCE
        return self.theirs == other.theirs


async def _audit(
    network: Network,
    link: StageLink,
    receipt: StageReceiptBody,
    params: GenerationParams,
    dtype: HiddenDType,
    ticket: CheckTicket,
    not_auditors: list[PeerId],
    only_peers: frozenset[PeerId] | None,
) -> _Caught | str | None:
    """Replay the stage's steps on other holders of its blocks: None if one agrees with it,
    _Caught if its reveal does not hold or two auditors part from it in the same way, a
    problem when the audit could not be done or the auditors disagree among themselves.
    (With a single other holder, its word decides.)"""
    auditors = _auditors(network, receipt, not_auditors, only_peers)
    if not auditors:
        return f"no other holder of blocks {receipt.span[0]}-{receipt.span[1]} to audit {link.peer_id}"
    try:
        with trio.fail_after(AUDIT_WAIT_S):
            steps = await _reveal(network, link, receipt, ticket)
    except _Caught as exc:
        return exc
    except RemoteError as exc:
        if exc.code == "bad_request":  # the session is there (or it would be unknown_session)
            return _Caught(f"it refused to reveal its steps: {exc}")
        return f"{link.peer_id} could not reveal its steps: {exc}"
    except (PeerError, MalformedMessage, trio.TooSlowError) as exc:
        return f"{link.peer_id} could not reveal its steps: {exc or 'timed out'}"
    found: list[_Divergence] = []
    problems: list[str] = []
    for auditor in auditors:
        try:
            with trio.fail_after(AUDIT_WAIT_S):
                divergence = await _replay(network, auditor, receipt, params, dtype, steps, link.n_embd)
        except (RemoteError, PeerError, MalformedMessage, trio.TooSlowError) as exc:
            problems.append(f"the audit of {link.peer_id} on {auditor} was not done: {exc or 'timed out'}")
            continue
        if divergence is None:
            return None  # an honest auditor agrees: any other that did not is the liar
        if len(auditors) == 1 or any(divergence.same_as(f) for f in found):
            return _Caught(divergence.why)
        found.append(divergence)
    if found:
        problems.append(f"the auditors of {link.peer_id} disagree with it and among themselves")
    return "; ".join(problems)


def _auditors(
    network: Network,
    receipt: StageReceiptBody,
    not_auditors: list[PeerId],
    only_peers: frozenset[PeerId] | None,
) -> list[PeerId]:
    """Other holders of exactly the receipt's blocks (MAX_AUDITORS at most), in random order:
    a stage cannot tell who will replay it."""
    holders = [
        stage.peer_id
        for _, stage in network.stage_offers(None, receipt.model_hash)
        if (stage.start, stage.stop) == receipt.span
        and stage.peer_id not in not_auditors
        and (only_peers is None or stage.peer_id in only_peers)
    ]
    return random.sample(holders, min(MAX_AUDITORS, len(holders)))


async def _reveal(
    network: Network, link: StageLink, receipt: StageReceiptBody, ticket: CheckTicket
) -> list[_Step]:
    """Every step of the stage's session, each checked against its receipt."""
    framed = await open_framed(network.host, link.peer_id, SHARD_PROTOCOL, RECEIPT_WAIT_S)
    try:
        await framed.send(ShardReveal(session_id=link.session_id, seed=ticket.seed.hex()))
        steps, revealed = [], 0
        for seq, digests in enumerate(receipt.steps):
            header = await _reply(framed, link.peer_id)
            if not isinstance(header, ShardRevealed) or header.seq != seq:
                raise _Caught(f"it revealed {header.kind} where step {seq} was due")
            data_in = await _raw(framed, link.peer_id)
            data_out = await _raw(framed, link.peer_id) if header.out_rows else b""
            revealed += len(data_in) + len(data_out)
            if revealed > MAX_REVEAL_BYTES:
                raise _Caught(f"it revealed more than {MAX_REVEAL_BYTES >> 20} MiB of steps")
            if (step_digest(data_in), step_digest(data_out)) != tuple(digests):
                raise _Caught(f"its revealed step {seq} is not the one its receipt signs")
            steps.append(_Step(header, data_in, data_out))
        return steps
    finally:
        await framed.reset()


async def _replay(
    network: Network,
    auditor: PeerId,
    receipt: StageReceiptBody,
    params: GenerationParams,
    dtype: HiddenDType,
    steps: list[_Step],
    n_embd: int,
) -> _Divergence | None:
    """The steps on a session of the auditor's that answers each itself; where it first
    parts from the stage's outputs, or None if it never does."""
    framed = await open_framed(network.host, auditor, SHARD_PROTOCOL, RECEIPT_WAIT_S)
    try:
        session_id = uuid.uuid4().hex
        await framed.send(
            ShardOpen(
                session_id=session_id,
                model_hash=receipt.model_hash,
                span=receipt.span,
                params=params,
                dtype=dtype,
            )
        )
        opened = await _reply(framed, auditor)
        if not isinstance(opened, ShardOpened):
            raise MalformedMessage(f"{auditor} answered an open with {opened.kind}")
        for step in steps:
            h = step.header
            on = ShardStep(
                session_id=session_id,
                seq=h.seq,
                rows=h.rows,
                dtype=h.dtype,
                sample=h.sample,
                keep=h.keep,
                draft=h.draft,
            )
            width = 1 if h.dtype == "i32" else n_embd
            await framed.send_framed(tensor_frames(on, decode_tensor(step.data_in, h.rows, width, h.dtype)))
            divergence = await _compare(framed, auditor, step, n_embd)
            if divergence is not None:
                return divergence
        return None
    finally:
        await framed.reset()


async def _compare(framed: FramedStream, auditor: PeerId, step: _Step, n_embd: int) -> _Divergence | None:
    """The auditor's answer to one replayed step against the stage's."""
    h = step.header
    if h.out_dtype == "i32":  # the last stage: the tokens it chose, or none for a prompt chunk
        reply = await _reply(framed, auditor)
        if h.out_rows == 0:
            if isinstance(reply, ShardAck):
                return None
            return _Divergence(h.seq, None, f"at step {h.seq} it chose no token where its blocks choose one")
        claimed = decode_tensor(step.data_out, h.out_rows, 1, "i32")[:, 0]
        for position, token in enumerate(claimed):  # a run of guesses taken, then one more
            if position:
                reply = await _reply(framed, auditor)
            if not isinstance(reply, ShardSampled):
                return _Divergence(
                    h.seq, None, f"at step {h.seq} it chose a token where its blocks choose none"
                )
            if reply.token_id != int(token):
                why = f"at step {h.seq} it chose token {int(token)}, its blocks choose {reply.token_id}"
                return _Divergence(h.seq, (position, reply.token_id), why)
        return None
    reply = await _reply(framed, auditor)
    if not isinstance(reply, ShardHidden):
        raise MalformedMessage(f"{auditor} answered a replayed step with {reply.kind}")
    theirs = decode_tensor(await _raw(framed, auditor), reply.rows, n_embd, reply.dtype)
    difference = _difference(decode_tensor(step.data_out, h.out_rows, n_embd, h.out_dtype), theirs)
    if difference <= AUDIT_TOLERANCE:
        return None
    return _Divergence(
        h.seq, theirs, f"at step {h.seq} its hidden states differ from its blocks' by {difference:.3f} RMS"
    )


def _difference(claimed: npt.NDArray[np.generic], replayed: npt.NDArray[np.generic]) -> float:
    """Largest difference between two outputs, per RMS of the replayed one; inf for other shapes."""
    if claimed.shape != replayed.shape:
        return math.inf
    a, b = claimed.astype(np.float32), replayed.astype(np.float32)
    rms = float(np.sqrt(np.mean(np.square(b)))) or 1.0
    return float(np.max(np.abs(a - b))) / rms


async def _reply(framed: FramedStream, peer_id: PeerId) -> ShardReplies:
    reply = await next_reply(framed)
    if reply is None:
        raise PeerError(f"{peer_id} ended the shard stream")
    return reply


async def _raw(framed: FramedStream, peer_id: PeerId) -> bytes:
    payload = await framed.receive()
    if payload is None:
        raise PeerError(f"{peer_id} ended the shard stream inside a step")
    return payload
