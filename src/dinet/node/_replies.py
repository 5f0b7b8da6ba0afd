"""Replies every node protocol sends the same way: refusals and 'still queued' heartbeats."""

from __future__ import annotations

import logging

import trio

from dinet.node.admission import Admission
from dinet.node.limits import PeerLimiter, Refusal
from dinet.p2p.streams import FramedStream
from dinet.wire.messages import ErrorCode, ErrorFrame, QueuedFrame

logger = logging.getLogger(__name__)

QUEUED_EVERY_S = 1.0


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
