"""Asking the network: choose a peer, stream its tokens, move to the next peer if it fails.

When a peer fails after some tokens, the next peer continues from them
(`prefix_tokens`), so the caller sees one unbroken answer.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Collection
from dataclasses import dataclass

import trio

from dinet.client.chain import plan_chain, run_chain
from dinet.client.network import Network
from dinet.client.verify import Verification, verify_answer
from dinet.errors import (
    AnswerTimedOut,
    BadReceipt,
    LedgerError,
    MalformedMessage,
    NoCapablePeer,
    PeerError,
    PeerStalled,
    PeerUnreachable,
    RemoteError,
)
from dinet.p2p.streams import FramedStream, open_framed
from dinet.routing.select import PeerView, Policy, decode_speed, rank_peers, within_budget
from dinet.trust.outcomes import VerificationOutcome
from dinet.trust.reputation import Event, slower_than_claimed
from dinet.wire.ids import INFER_PROTOCOL
from dinet.wire.messages import (
    CountersignedReceipt,
    EndFrame,
    ErrorFrame,
    GenerationParams,
    InferRequest,
    QueuedFrame,
    TokenFrame,
    Usage,
    decode_reply,
    encode,
)
from dinet.wire.receipt import check_delivery, countersign, request_hash, verify_node_signature

logger = logging.getLogger(__name__)

OPEN_TIMEOUT_S = 5.0
FIRST_FRAME_MIN_S = 5.0
BUSY_PAUSE_S = 0.2
BETWEEN_FRAMES_MIN_S = 4.0  # a loaded 2-core machine can pause a healthy stream ~2 s
# Codes after which another peer may well succeed.
_RETRYABLE = {"busy", "rate_limited", "engine_crashed", "internal", "unknown_model"}


@dataclass(frozen=True)
class Answer:
    text: str
    peer_id: str
    model_id: str
    model_hash: str
    usage: Usage
    finish_reason: str
    ttft_ms: float
    tokens_per_s: float
    peers_tried: tuple[str, ...]
    max_tokens_capped: int | None = None  # set when a deadline lowered max_tokens
    receipts: tuple[CountersignedReceipt, ...] = ()  # countersigned and kept in the ledger
    refused_receipts: tuple[str, ...] = ()  # why a peer's receipt was refused
    chain: tuple[str, ...] = ()  # pipeline stages that answered, in order (empty: one whole node)
    token_ids: tuple[int, ...] = ()  # the completion's tokens, as the peers claimed them
    verification: Verification | None = None  # set when the answer was checked by another peer


async def ask(
    network: Network,
    params: GenerationParams,
    *,
    model_id: str | None = None,
    model_hash: str | None = None,
    discover_timeout: float = 10.0,
    request_timeout: float = 120.0,
    policy: Policy = "latency",
    deadline_s: float | None = None,
    max_price: float | None = None,
    on_attempt: Callable[[str], None] | None = None,
    sharded: bool | None = None,
    only_peers: Collection[str] | None = None,
    verify_rate: float = 0.0,
    verifiers: Collection[str] | None = None,
) -> AsyncGenerator[TokenFrame | Answer, None]:
    """Yield each token as it arrives, then one Answer.

    A peer that breaks or stalls is backed off and the answer continues on the
    next-best peer from the tokens already produced; a busy peer is skipped for a
    moment. With `deadline_s`, max_tokens is capped to what the chosen peer can
    produce in that time (the Answer says so). `on_attempt` is told each peer id
    as it is asked. Peers asking more than `max_price` credits per token (or the
    network's own limit) are never chosen. Each peer's receipt is checked against
    what it delivered, countersigned, sent back and kept in the network's ledger.

    `sharded`: True answers through a chain of pipeline stages (`dinet.client.chain`);
    None (the default) does so only when no single peer serves the whole model.

    With `only_peers`, no other peer is asked (a vote's replica stays on its peer).

    Each attempt's outcome goes to the network's reputation book: a complete answer
    (and whether it came far slower than the peer advertises), or a failure. Peers
    excluded for a low reputation are never asked.

    A fraction `verify_rate` of answers (1.0: all) is re-scored by another peer
    serving the same model hash (only among `verifiers`, if given) before the Answer
    is yielded; the outcome is in `Answer.verification` and goes to
    `network.outcomes` for each peer that produced tokens.
    """
    max_price = network.max_price if max_price is None else max_price
    if not sharded:
        whole = await network.discover(
            model_id, model_hash, timeout=discover_timeout, or_stages=sharded is None
        )
        sharded = not whole
    if sharded:
        async for event in _ask_chain(network, params, model_id, model_hash, discover_timeout, on_attempt):
            yield event
        return
    request_id = uuid.uuid4().hex
    tokens: list[TokenFrame] = []
    tried: list[str] = []
    started = time.perf_counter()
    first_token_at: float | None = None
    last_error: Exception | None = None
    # A deadline, not a cancel scope: a scope must not span this generator's yields.
    deadline = trio.current_time() + request_timeout
    broken: set[str] = set()  # failed during this request: not asked again
    busy: set[str] = set()  # refused for lack of room: asked again after a pause
    capped_to: int | None = None
    receipts: list[CountersignedReceipt] = []
    refused: list[str] = []
    producers: list[tuple[str, int]] = []  # (peer, index of its first token), in order

    while True:
        remaining = params.max_tokens - len(tokens)
        capable = network.candidates(model_id, model_hash)
        if only_peers is not None:
            capable = [p for p in capable if p.peer_id in only_peers]
        affordable = within_budget(capable, max_price)
        if capable and not affordable:
            raise NoCapablePeer(f"no peer serves {model_hash or model_id or 'the model'} within "
                                f"{max_price:g} credits per token")
        allowed = network.trusted(affordable)
        if affordable and not allowed:
            raise NoCapablePeer(f"every peer serving {model_hash or model_id or 'the model'} is "
                                "excluded for a low reputation (`din peers` shows the scores)")
        candidates = [p for p in allowed if p.peer_id not in broken | busy]
        if not candidates and busy and trio.current_time() + BUSY_PAUSE_S < deadline:
            await trio.sleep(BUSY_PAUSE_S)  # every capable peer is full: wait for a slot
            busy.clear()
            continue
        if not candidates:
            break
        peer = rank_peers(candidates, remaining, policy, limit=1)[0]
        if deadline_s is not None and capped_to is None:
            capped_to = token_budget(peer, deadline_s)
            if capped_to < params.max_tokens:
                params = params.model_copy(update={"max_tokens": capped_to})
        tried.append(peer.peer_id)
        producers.append((peer.peer_id, len(tokens)))
        if on_attempt is not None:
            on_attempt(peer.peer_id)
        resumed = params.model_copy(update={"prefix_tokens": tuple(t.token_id for t in tokens)})
        request = InferRequest(
            request_id=request_id, model_id=model_id, model_hash=model_hash, params=resumed
        )
        record = network.health.get(peer.peer_id)
        record.in_flight += 1
        limits = _StallLimits.for_peer(peer)
        books = _Books(peer, max_price, receipts, refused)
        timing = _Timing()
        frames = _stream_from(network, peer.peer_id, request, deadline, limits, books, timing)
        try:
            async for frame in frames:
                if isinstance(frame, TokenFrame):
                    if first_token_at is None:
                        first_token_at = time.perf_counter()
                    tokens.append(frame)
                    yield frame
                    continue
                end = frame
                decode_s = time.perf_counter() - (first_token_at or started)
                tokens_per_s = (len(tokens) - 1) / decode_s if len(tokens) > 1 else 0.0
                network.health.answered(peer.peer_id)
                if end.tokens_per_s > 0:
                    network.health.measured(peer.peer_id, end.tokens_per_s, trio.current_time())
                token_ids = [t.token_id for t in tokens]
                verification = None
                if verify_rate > 0 and random.random() < verify_rate:
                    verification = await verify_answer(
                        network, params, token_ids, end.model_hash,
                        exclude={p for p, _ in producers}, verifiers=verifiers,
                    )
                    _record_outcomes(network, verification, producers, len(tokens), end.model_hash,
                                     request_id)
                await network.note_all(_outcomes(peer, timing, resumed=bool(resumed.prefix_tokens)))
                yield Answer(
                    text="".join(t.text for t in tokens),
                    peer_id=peer.peer_id,
                    model_id=end.model_id,
                    model_hash=end.model_hash,
                    usage=end.usage,
                    finish_reason=end.finish_reason,
                    ttft_ms=((first_token_at or time.perf_counter()) - started) * 1e3,
                    tokens_per_s=tokens_per_s,
                    peers_tried=tuple(tried),
                    max_tokens_capped=capped_to if capped_to == params.max_tokens else None,
                    receipts=tuple(receipts),
                    refused_receipts=tuple(refused),
                    token_ids=tuple(token_ids),
                    verification=verification,
                )
                return
        except AnswerTimedOut:
            raise
        except RemoteError as exc:
            if exc.code not in _RETRYABLE:
                raise
            last_error = exc
            if exc.code in ("busy", "rate_limited"):
                busy.add(peer.peer_id)
                continue
        except (PeerError, MalformedMessage) as exc:
            last_error = exc
        finally:
            record.in_flight -= 1
            await frames.aclose()  # its stream closes now, not when the garbage collector comes
        if not isinstance(last_error, PeerUnreachable):
            # A stream that never opened says more about the path than the peer: back-off
            # and liveness probes deal with it; reputation judges what peers do.
            await network.note(peer.peer_id, Event.FAILURE)
        broken.add(peer.peer_id)
        backoff = network.health.failed(peer.peer_id, trio.current_time())
        logger.info(
            "peer %s failed after %d tokens (%s); backed off %.0f s, trying the next one",
            peer.peer_id,
            len(tokens),
            last_error,
            backoff,
        )
    wanted = model_hash or model_id or "the model"
    if last_error is None:
        raise NoCapablePeer(f"no reachable peer serves {wanted}")
    raise NoCapablePeer(f"every peer serving {wanted} failed; last error: {last_error}")


async def _ask_chain(
    network: Network, params: GenerationParams, model_id: str | None, model_hash: str | None,
    discover_timeout: float, on_attempt: Callable[[str], None] | None,
) -> AsyncGenerator[TokenFrame | Answer, None]:
    plan = await plan_chain(network, model_id, model_hash, timeout=discover_timeout)
    if on_attempt is not None:
        for peer_id in plan.route.peers:
            on_attempt(peer_id)
    started = time.perf_counter()
    first_at: float | None = None
    tokens: list[TokenFrame] = []
    async for event in run_chain(network, plan, params):
        if isinstance(event, TokenFrame):
            first_at = first_at or time.perf_counter()
            tokens.append(event)
            yield event
            continue
        decode_s = time.perf_counter() - (first_at or started)
        yield Answer(
            text="".join(t.text for t in tokens), peer_id=event.chain[-1], model_id=event.model_id,
            model_hash=event.model_hash, usage=event.usage, finish_reason=event.finish_reason,
            ttft_ms=((first_at or time.perf_counter()) - started) * 1e3,
            tokens_per_s=(len(tokens) - 1) / decode_s if len(tokens) > 1 and decode_s > 0 else 0.0,
            peers_tried=event.peers_tried, chain=event.chain,
        )
def _record_outcomes(
    network: Network, verification: Verification, producers: list[tuple[str, int]], n_tokens: int,
    model_hash: str, request_id: str,
) -> None:
    """Tell `network.outcomes` how each producing peer's share of the answer fared."""
    if verification.verified is None or verification.verifier is None or network.outcomes is None:
        return
    bounds = [start for _, start in producers[1:]] + [n_tokens]
    for (peer_id, start), end in zip(producers, bounds, strict=True):
        if end <= start:
            continue  # this peer produced nothing
        bad = tuple(i for i in verification.bad_positions if start <= i < end)
        network.outcomes.record_outcome(peer_id, VerificationOutcome(
            kind="verification", passed=not bad, verifier=verification.verifier,
            model_hash=model_hash, checked=end - start, bad_positions=bad, request_id=request_id,
        ))


def token_budget(peer: PeerView, deadline_s: float) -> int:
    """How many tokens `peer` can produce within `deadline_s`, by its known speed."""
    rtt = peer.rtt_ms or 0.0
    decode_s = deadline_s - (rtt + peer.ttft_ms) / 1000
    return max(1, int(decode_s * decode_speed(peer)))


@dataclass(frozen=True)
class _StallLimits:
    """How long a peer may stay silent before it counts as stalled."""

    first_frame_s: float
    between_frames_s: float

    @classmethod
    def for_peer(cls, peer: PeerView) -> _StallLimits:
        # A queued request hears from its peer every second (a queued frame), so
        # the first frame is only as late as a prefill on a loaded machine.
        first = FIRST_FRAME_MIN_S + 3 * peer.ttft_ms / 1000
        between = max(BETWEEN_FRAMES_MIN_S, 20 / decode_speed(peer))
        return cls(first, between)


@dataclass
class _Timing:
    """When one attempt's frames came (perf_counter seconds), to hold a peer to its claims."""

    sent_at: float = 0.0
    queued: bool = False  # it waited for a slot: its time to first token says nothing
    first_token_at: float | None = None
    ended_at: float = 0.0
    tokens: int = 0


def _outcomes(peer: PeerView, timing: _Timing, *, resumed: bool) -> list[tuple[str, Event]]:
    """What a complete answer tells of its peer: a success, and maybe that it was slow."""
    events = [(peer.peer_id, Event.SUCCESS)]
    first = timing.first_token_at
    decode_s = timing.ended_at - first if first is not None else 0.0
    observed_tps = (timing.tokens - 1) / decode_s if decode_s > 0 and timing.tokens > 1 else None
    observed_ttft = None if first is None or timing.queued or resumed else (first - timing.sent_at) * 1e3
    if slower_than_claimed(peer.tokens_per_s, peer.ttft_ms, tokens=timing.tokens,
                           observed_tokens_per_s=observed_tps, observed_ttft_ms=observed_ttft):
        logger.info("peer %s answered far slower than it advertises", peer.peer_id)
        events.append((peer.peer_id, Event.SLOW))
    return events


@dataclass
class _Books:
    """What one attempt needs to settle its receipt, and where the outcome goes."""

    peer: PeerView
    max_price: float | None
    receipts: list[CountersignedReceipt]
    refused: list[str]


async def _settle(
    network: Network, framed: FramedStream, books: _Books, request: InferRequest, digest: str,
    token_ids: list[int], end: EndFrame,
) -> None:
    """Check the peer's receipt against what it delivered; countersign, send back and keep it.

    A receipt that does not match is refused (never countersigned) and the peer is
    backed off as if it had failed; the answer itself stands.
    """
    peer_id = books.peer.peer_id
    if end.receipt is None:
        logger.info("peer %s sent no receipt", peer_id)
        return
    limit = books.max_price
    try:
        body = verify_node_signature(end.receipt)
        check_delivery(
            body, node=peer_id, client=network.peer_id, request_id=request.request_id,
            request_hash=digest, model_hash=end.model_hash,
            first_index=len(request.params.prefix_tokens), token_ids=token_ids,
            prompt_tokens=end.usage.prompt_tokens,
            max_price_prompt=_cap(books.peer.price_per_prompt_token, limit),
            max_price=_cap(books.peer.price_per_token, limit),
        )
    except BadReceipt as exc:
        logger.warning("refused the receipt of %s: %s", peer_id, exc)
        books.refused.append(str(exc))
        network.health.failed(peer_id, trio.current_time())
        await network.note(peer_id, Event.FAILURE)
        return
    receipt = countersign(end.receipt, network.key)
    await framed.send(receipt)
    if network.ledger is not None:
        try:
            await trio.to_thread.run_sync(network.ledger.record, receipt)
        except LedgerError as exc:
            logger.warning("receipt of %s not kept: %s", peer_id, exc)
            books.refused.append(str(exc))
            return
    books.receipts.append(receipt)


def _cap(advertised: float, limit: float | None) -> float:
    return advertised if limit is None else min(advertised, limit)


async def _stream_from(
    network: Network, peer_id: str, request: InferRequest, deadline: float, limits: _StallLimits,
    books: _Books | None = None, timing: _Timing | None = None,
) -> AsyncGenerator[TokenFrame | EndFrame, None]:
    """Frames from one peer until its end frame; errors as exceptions.

    PeerStalled when it stays silent past `limits`; AnswerTimedOut once `deadline`
    (trio clock) passes. With `books`, the peer's receipt is settled before the end
    frame is passed on; `timing` notes when frames came.
    """
    timing = _Timing() if timing is None else timing
    framed = await open_framed(network.host, peer_id, INFER_PROTOCOL, OPEN_TIMEOUT_S)
    finished = False
    sent = encode(request)
    received: list[int] = []
    try:
        await framed.send_payload(sent)
        timing.sent_at = time.perf_counter()
        next_index = len(request.params.prefix_tokens)
        silence_s = limits.first_frame_s
        while True:
            payload = await _receive_within(framed, peer_id, silence_s, deadline)
            silence_s = limits.between_frames_s
            if payload is None:
                raise PeerError(f"{peer_id} ended the stream without an end frame")
            frame = decode_reply(payload)
            if isinstance(frame, QueuedFrame):
                silence_s = limits.first_frame_s  # alive, waiting for a slot
                timing.queued = True
                continue
            if isinstance(frame, ErrorFrame):
                raise RemoteError(frame.code, frame.message)
            if isinstance(frame, EndFrame):
                finished = True
                timing.ended_at = time.perf_counter()
                if books is not None:
                    await _settle(network, framed, books, request, request_hash(sent), received, frame)
                yield frame
                return
            if frame.index != next_index:
                raise MalformedMessage(f"{peer_id} sent token {frame.index}, expected {next_index}")
            next_index += 1
            received.append(frame.token_id)
            if timing.first_token_at is None:
                timing.first_token_at = time.perf_counter()
            timing.tokens += 1
            yield frame
    finally:
        # A reset tells a peer we left mid-answer, so it stops generating for nobody.
        with trio.CancelScope(shield=True):
            await (framed.close() if finished else framed.reset())


async def _receive_within(
    framed: FramedStream, peer_id: str, silence_s: float, deadline: float
) -> bytes | None:
    stall_at = trio.current_time() + silence_s
    try:
        with trio.fail_at(min(stall_at, deadline)):
            return await framed.receive()
    except trio.TooSlowError:
        if trio.current_time() >= deadline:
            raise AnswerTimedOut("no complete answer in the time allowed") from None
        raise PeerStalled(f"{peer_id} sent nothing for {silence_s:.1f} s") from None
