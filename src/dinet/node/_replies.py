"""What every node protocol does the same way: per-peer limits, reading the one
request, refusals and 'still queued' heartbeats."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from dinet.errors import FrameTooLarge, MalformedMessage
from dinet.node.admission import Admission
from dinet.node.limits import PeerLimiter, Refusal
from dinet.p2p.streams import FramedStream
from dinet.wire.messages import ErrorCode, ErrorFrame, QueuedFrame

logger = logging.getLogger(__name__)

QUEUED_EVERY_S = 1.0
REQUEST_WAIT_S = 10.0  # a stream that sends no request in this time is dropped

T = TypeVar("T")


async def within_limits(
    framed: FramedStream, limiter: PeerLimiter | None, serve: Callable[[], Awaitable[None]]
) -> None:
    """`serve()` if the peer is within its limits (checked before reading, so a flood
    costs no decoding), else turn the stream away."""
    if limiter is None:
        await serve()
        return
    peer = framed.remote_peer
    refusal = limiter.acquire(peer, trio.current_time())
    if refusal is not None:
        await turn_away(framed, limiter, refusal)
        return
    try:
        await serve()
    finally:
        limiter.release(peer)


async def read_request(framed: FramedStream, decode: Callable[[bytes], T]) -> tuple[T, bytes] | None:
    """The stream's request, decoded, and its payload; None if the stream ended first,
    or, after a typed refusal, if the request is late, too large or malformed."""
    try:
        with trio.fail_after(REQUEST_WAIT_S):
            payload = await framed.receive()
        if payload is None:
            return None
        return decode(payload), payload
    except trio.TooSlowError:
        await refuse(framed, "bad_request", f"no request within {REQUEST_WAIT_S:g} s")
    except FrameTooLarge as exc:
        await refuse(framed, "too_large", str(exc))
    except MalformedMessage as exc:
        await refuse(framed, "bad_request", str(exc))
    return None


async def tell_queued(framed: FramedStream, admission: Admission) -> None:
    """While a request waits for a slot, say so every second: the client then knows
    the peer is alive, just busy, and does not take the wait for a stall."""
    while True:
        await framed.send(QueuedFrame(waiting=admission.queued))
        await trio.sleep(QUEUED_EVERY_S)


async def refuse(framed: FramedStream, code: ErrorCode, message: str) -> None:
    """Send the offender a typed error frame (the caller closes the stream or goes on)."""
    level = logging.DEBUG if code == "rate_limited" else logging.INFO  # a flood must not flood the log
    logger.log(level, "request from %s refused (%s): %s", framed.remote_peer, code, message)
    await framed.send(ErrorFrame(code=code, message=message[:1000]))


async def turn_away(framed: FramedStream, limiter: PeerLimiter, refusal: Refusal) -> None:
    """Answer a stream the per-peer limiter refused: `rate_limited` at once, or held
    until the peer may ask again (a flooder waiting for it is slowed down), or, beyond
    the streams held for that peer, a reset without a reply."""
    if refusal.drop:
        logger.debug("stream from %s dropped: %s", framed.remote_peer, refusal.reason)
        await framed.reset()
        return
    if refusal.hold_s <= 0:
        await refuse(framed, "rate_limited", refusal.reason)
        return
    try:
        await trio.sleep(refusal.hold_s)
        await refuse(framed, "rate_limited", refusal.reason)
    finally:
        limiter.unhold(framed.remote_peer)
