"""Answering from whole-model peers: choose one, stream its tokens, move to the next if it fails.

When a peer fails after some tokens, the next peer continues from them
(`prefix_tokens`), so the caller sees one unbroken answer. A busy peer is skipped for a
moment; a peer that breaks or stalls is backed off.

With `deadline_s`, the peers expected to answer in time are asked first, max_tokens is
capped to what the chosen peer can produce in that time, and the time left travels in
the request (`deadline_ms`): a node whose queue and speed cannot meet it refuses at
once (`deadline`), and the next peer is asked at once. DeadlineUnmet when none can.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass, replace

import trio

from dinet.client._records import Records
from dinet.client._strategy import Finished
from dinet.client.network import Network
from dinet.client.options import AskOptions
from dinet.errors import (
    AnswerTimedOut,
    ChainError,
    DeadlineUnmet,
    MalformedMessage,
    NoCapablePeer,
    PeerError,
    PeerStalled,
    RemoteError,
)
from dinet.p2p.streams import FramedStream, open_framed
from dinet.routing.affinity import Link, chat_chain, raw_chain
from dinet.routing.select import (
    CHARS_PER_TOKEN,
    PeerView,
    decode_speed,
    rank_peers,
    token_budget,
    within_budget,
)
from dinet.trust.reputation import slower_than_claimed
from dinet.wire.ids import INFER_PROTOCOL, PeerId
from dinet.wire.messages import (
    MAX_DEADLINE_MS,
    EndFrame,
    ErrorFrame,
    GenerationParams,
    InferRequest,
    QueuedFrame,
    TokenFrame,
    decode_reply,
    encode,
)
from dinet.wire.receipt import request_hash

logger = logging.getLogger(__name__)

# The first frame waits for a prefill with no heartbeat: on a loaded 2-core machine
# (28 node processes and a test run) a short prompt's first token once took over 5 s.
FIRST_FRAME_MIN_S = 10.0
BUSY_PAUSE_S = 0.2
BETWEEN_FRAMES_MIN_S = 4.0  # a loaded 2-core machine can pause a healthy stream ~2 s
# A long prompt's prefill is silent (no frame until the first token): allow for it, at
# what a small model takes on one loaded core (~500 tokens of prompt and prefix: +10 s).
PREFILL_ALLOWANCE_S_PER_CHAR = 0.005
# Codes after which another peer may well succeed.
_RETRYABLE = {
    "busy", "rate_limited", "deadline", "probation", "engine_crashed", "internal", "unknown_model",
    "payment_required",
}  # fmt: skip


class WholeModel:
    """The strategy for a model that single peers serve whole."""

    def __init__(
        self,
        network: Network,
        params: GenerationParams,
        options: AskOptions,
        records: Records,
        on_attempt: Callable[[PeerId], None] | None = None,
        asked_at: float | None = None,
    ) -> None:
        self._network = network
        self._params = params
        self._options = options
        self._records = records
        self._on_attempt = on_attempt
        # When the caller asked (trio clock): a deadline counts from there.
        self._asked_at = trio.current_time() if asked_at is None else asked_at
        self._chain = prompt_chain(params)

    async def run(self, deadline: float) -> AsyncGenerator[TokenFrame | Finished, None]:
        network, options, records = self._network, self._options, self._records
        params = self._params
        wanted = options.model_hash or options.model_id or "the model"
        if params.uses_tools:
            wanted += " with tool support"
        tokens: list[TokenFrame] = []
        tried: list[PeerId] = []
        last_error: Exception | None = None
        broken: set[str] = set()  # failed during this request: not asked again
        busy: set[str] = set()  # refused for lack of room: asked again after a pause
        too_slow: set[str] = set()  # refused because they cannot meet the deadline
        unpaid: set[str] = set()  # refused for want of a payment channel (with room)
        capped_to: int | None = None
        while True:
            candidates = self._candidates(wanted, broken | busy | too_slow | unpaid)
            if not candidates and busy and trio.current_time() + BUSY_PAUSE_S < deadline:
                await trio.sleep(BUSY_PAUSE_S)  # every capable peer is full: wait for a slot
                busy.clear()
                continue
            if not candidates:
                break
            left_s = self._time_left_s()
            peer = rank_peers(
                candidates,
                params.max_tokens - len(tokens),
                options.policy,
                region=options.region,
                deadline_s=left_s,
                limit=1,
            )[0]
            if left_s is not None and capped_to is None:
                capped_to = token_budget(peer, left_s)
                if capped_to < params.max_tokens:
                    params = params.model_copy(update={"max_tokens": capped_to})
            tried.append(peer.peer_id)
            records.produced_by((peer.peer_id,), len(tokens))
            if self._on_attempt is not None:
                self._on_attempt(peer.peer_id)
            resumed = params.model_copy(update={"prefix_tokens": tuple(t.token_id for t in tokens)})
            try:
                channel = await network.channel_for(peer.peer_id)
            except ChainError as exc:
                last_error = exc
                unpaid.add(peer.peer_id)
                continue
            request = InferRequest(
                request_id=records.request_id,
                model_id=options.model_id,
                model_hash=options.model_hash,
                params=resumed,
                deadline_ms=_deadline_ms(self._time_left_s()),
                channel=channel,
            )
            health = network.health.get(peer.peer_id)
            ours = health.sent()
            timing = _Timing()
            end: EndFrame | None = None
            try:
                frames = _stream_from(network, peer, request, deadline, records, timing)
                async with aclosing(frames):
                    async for frame in frames:
                        if isinstance(frame, EndFrame):
                            end = frame
                        else:
                            tokens.append(frame)
                            yield frame
            except AnswerTimedOut:
                raise
            except RemoteError as exc:
                if exc.code not in _RETRYABLE:
                    raise
                last_error = exc
                if exc.code in ("busy", "rate_limited"):
                    busy.add(peer.peer_id)
                    continue
                if exc.code in ("deadline", "probation"):  # no fault of the peer's: the next one, at once
                    too_slow.add(peer.peer_id)
                    continue
                if exc.code == "payment_required":  # nor is this: its terms, not a failure
                    unpaid.add(peer.peer_id)
                    continue
            except (PeerError, MalformedMessage) as exc:
                last_error = exc
            finally:
                health.done(ours)
            if end is not None:
                # Our own timing, not the node's word: a deadline's token budget rests on it.
                measured_tps = timing.tokens_per_s()
                if measured_tps is not None:
                    network.health.measured(peer.peer_id, measured_tps, trio.current_time())
                slow = _slower_than_claimed(peer, timing, resumed=bool(resumed.prefix_tokens))
                await records.answered([peer.peer_id], slow=[peer.peer_id] if slow else [])
                network.prefixes.served(peer.peer_id, self._chain)
                yield Finished(
                    peer_id=peer.peer_id,
                    model_id=end.model_id,
                    model_hash=end.model_hash,
                    usage=end.usage,
                    finish_reason=end.finish_reason,
                    peers_tried=tuple(tried),
                    params=params,
                    max_tokens_capped=capped_to if capped_to == params.max_tokens else None,
                )
                return
            assert last_error is not None  # the attempt failed: every way out of it above says why
            broken.add(peer.peer_id)
            network.prefixes.forget(peer.peer_id)  # it may restart with an empty cache
            backoff = await records.failed(peer.peer_id, last_error)
            logger.info(
                "peer %s failed after %d tokens (%s); backed off %.0f s, trying the next one",
                peer.peer_id,
                len(tokens),
                last_error,
                backoff,
            )
        if last_error is None:
            raise NoCapablePeer(f"no reachable peer serves {wanted}")
        if isinstance(last_error, RemoteError) and last_error.code == "deadline":
            raise DeadlineUnmet(
                f"no peer serving {wanted} can answer within {options.deadline_s:g} s; last refusal: "
                f"{last_error.message}"
            )
        raise NoCapablePeer(f"every peer serving {wanted} failed; last error: {last_error}")

    def _time_left_s(self) -> float | None:
        """What is left of the deadline, if the request has one."""
        if self._options.deadline_s is None:
            return None
        return self._asked_at + self._options.deadline_s - trio.current_time()

    def _candidates(self, wanted: str, skip: set[str]) -> list[PeerView]:
        """The peers this request may ask now; NoCapablePeer when its limits leave none at all."""
        network, options = self._network, self._options
        capable = network.candidates(options.model_id, options.model_hash, tools=self._params.uses_tools)
        if options.only_peers is not None:
            capable = [p for p in capable if p.peer_id in options.only_peers]
        affordable = within_budget(capable, self._records.max_price)
        if capable and not affordable:
            limit = self._records.max_price
            raise NoCapablePeer(f"no peer serves {wanted} within {limit:g} credits per token")
        allowed = network.trusted(affordable)
        if affordable and not allowed:
            raise NoCapablePeer(
                f"every peer serving {wanted} is excluded for a low reputation (`din peers` shows the scores)"
            )
        cached = network.prefixes.cached_chars(self._chain)
        chars = self._params.prompt_chars
        return [
            replace(p, prompt_chars=chars, cached_prompt_chars=cached.get(p.peer_id, 0))
            for p in allowed
            if p.peer_id not in skip
        ]


@dataclass(frozen=True)
class _StallLimits:
    """How long a peer may stay silent before it counts as stalled."""

    first_frame_s: float
    between_frames_s: float

    @classmethod
    def for_peer(cls, peer: PeerView, params: GenerationParams) -> _StallLimits:
        # A queued request hears from its peer every second (a queued frame), so
        # the first frame is only as late as a prefill on a loaded machine.
        silent_chars = params.prompt_chars + CHARS_PER_TOKEN * len(params.prefix_tokens)
        first = FIRST_FRAME_MIN_S + 3 * peer.ttft_ms / 1000 + silent_chars * PREFILL_ALLOWANCE_S_PER_CHAR
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

    def tokens_per_s(self) -> float | None:
        """The decode speed we saw (after the first token); None with fewer than 2 tokens."""
        first = self.first_token_at
        decode_s = self.ended_at - first if first is not None else 0.0
        return (self.tokens - 1) / decode_s if decode_s > 0 and self.tokens > 1 else None


def prompt_chain(params: GenerationParams) -> list[Link]:
    """The prompt's hash chain, by which the peers holding its beginning are known."""
    if params.messages is not None:
        return chat_chain([(m.role, m.content) for m in params.messages])
    return raw_chain(params.prompt or "")


def _deadline_ms(left_s: float | None) -> int | None:
    """The deadline as it travels: whole ms left, at least 1 (a node refuses what it cannot meet)."""
    if left_s is None:
        return None
    return min(max(1, int(left_s * 1000)), MAX_DEADLINE_MS)


def _slower_than_claimed(peer: PeerView, timing: _Timing, *, resumed: bool) -> bool:
    first = timing.first_token_at
    observed_tps = timing.tokens_per_s()
    observed_ttft = None if first is None or timing.queued or resumed else (first - timing.sent_at) * 1e3
    slow = slower_than_claimed(
        peer.tokens_per_s,
        peer.ttft_ms,
        tokens=timing.tokens,
        observed_tokens_per_s=observed_tps,
        observed_ttft_ms=observed_ttft,
    )
    if slow:
        logger.info("peer %s answered far slower than it advertises", peer.peer_id)
    return slow


async def _stream_from(
    network: Network,
    peer: PeerView,
    request: InferRequest,
    deadline: float,
    records: Records,
    timing: _Timing,
) -> AsyncGenerator[TokenFrame | EndFrame, None]:
    """Frames from one peer until its end frame; errors as exceptions.

    PeerStalled when it stays silent past its stall limits; AnswerTimedOut once `deadline`
    (trio clock) passes. The peer's receipt is settled before the end frame is passed on;
    `timing` notes when frames came.
    """
    limits = _StallLimits.for_peer(peer, request.params)
    peer_id = peer.peer_id
    framed = await open_framed(network.host, peer_id, INFER_PROTOCOL, network.dial_timeout_s)
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
                await records.settle(framed, peer, request, request_hash(sent), received, frame)
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
    framed: FramedStream, peer_id: PeerId, silence_s: float, deadline: float
) -> bytes | None:
    stall_at = trio.current_time() + silence_s
    try:
        with trio.fail_at(min(stall_at, deadline)):
            return await framed.receive()
    except trio.TooSlowError:
        if trio.current_time() >= deadline:
            raise AnswerTimedOut("no complete answer in the time allowed") from None
        raise PeerStalled(f"{peer_id} sent nothing for {silence_s:.1f} s") from None
