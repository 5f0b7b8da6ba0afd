"""Asking the network: choose a peer, stream its tokens, move to the next peer if it fails.

When a peer fails after some tokens, the next peer continues from them
(`prefix_tokens`), so the caller sees one unbroken answer.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from dinet.client.network import Network
from dinet.errors import (
    AnswerTimedOut,
    MalformedMessage,
    NoCapablePeer,
    PeerError,
    PeerUnreachable,
    RemoteError,
)
from dinet.p2p.streams import FramedStream
from dinet.routing.select import rank_peers
from dinet.wire.ids import INFER_PROTOCOL
from dinet.wire.messages import (
    EndFrame,
    ErrorFrame,
    GenerationParams,
    InferRequest,
    TokenFrame,
    Usage,
    decode_reply,
)

logger = logging.getLogger(__name__)

OPEN_TIMEOUT_S = 5.0
# Codes after which another peer may well succeed.
_RETRYABLE = {"busy", "engine_crashed", "internal", "unknown_model"}


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


async def ask(
    network: Network,
    params: GenerationParams,
    *,
    model_id: str | None = None,
    model_hash: str | None = None,
    discover_timeout: float = 10.0,
    request_timeout: float = 120.0,
) -> AsyncIterator[TokenFrame | Answer]:
    """Yield each token as it arrives, then one Answer."""
    peers = await network.discover(model_id, model_hash, timeout=discover_timeout)
    ranked = [p.peer_id for p in rank_peers(peers, params.max_tokens)]
    request_id = uuid.uuid4().hex
    tokens: list[TokenFrame] = []
    tried: list[str] = []
    started = time.perf_counter()
    first_token_at: float | None = None
    last_error: Exception | None = None

    # A deadline, not a cancel scope: a scope must not span this generator's yields.
    deadline = trio.current_time() + request_timeout
    for peer_id in ranked:
        tried.append(peer_id)
        resumed = params.model_copy(update={"prefix_tokens": tuple(t.token_id for t in tokens)})
        request = InferRequest(
            request_id=request_id, model_id=model_id, model_hash=model_hash, params=resumed
        )
        try:
            async for frame in _stream_from(network, peer_id, request, deadline):
                if isinstance(frame, TokenFrame):
                    if first_token_at is None:
                        first_token_at = time.perf_counter()
                    tokens.append(frame)
                    yield frame
                    continue
                end = frame
                decode_s = time.perf_counter() - (first_token_at or started)
                yield Answer(
                    text="".join(t.text for t in tokens),
                    peer_id=peer_id,
                    model_id=end.model_id,
                    model_hash=end.model_hash,
                    usage=end.usage,
                    finish_reason=end.finish_reason,
                    ttft_ms=((first_token_at or time.perf_counter()) - started) * 1e3,
                    tokens_per_s=(len(tokens) - 1) / decode_s if len(tokens) > 1 else 0.0,
                    peers_tried=tuple(tried),
                )
                return
        except AnswerTimedOut:
            raise
        except RemoteError as exc:
            if exc.code not in _RETRYABLE:
                raise
            last_error = exc
        except (PeerError, MalformedMessage) as exc:
            last_error = exc
        logger.info("peer %s failed (%s); trying the next one", peer_id, last_error)
        network.directory.remove(peer_id)
    raise NoCapablePeer(f"every capable peer failed; last error: {last_error}")


async def _stream_from(
    network: Network, peer_id: str, request: InferRequest, deadline: float
) -> AsyncIterator[TokenFrame | EndFrame]:
    """Frames from one peer until its end frame; errors as exceptions.

    AnswerTimedOut once `deadline` (trio clock) passes.
    """
    try:
        with trio.fail_after(OPEN_TIMEOUT_S):
            stream = await network.host.new_stream(ID.from_base58(peer_id), [TProtocol(INFER_PROTOCOL)])
    except trio.TooSlowError:
        raise PeerUnreachable(f"{peer_id} did not open a stream in {OPEN_TIMEOUT_S:g} s") from None
    except Exception as exc:  # libp2p raises assorted types when a stream cannot open
        raise PeerUnreachable(f"cannot open a stream to {peer_id}: {exc}") from None
    framed = FramedStream(stream)
    try:
        await framed.send(request)
        next_index = len(request.params.prefix_tokens)
        while True:
            try:
                with trio.fail_at(deadline):
                    payload = await framed.receive()
            except trio.TooSlowError:
                raise AnswerTimedOut("no complete answer in the time allowed") from None
            if payload is None:
                raise PeerError(f"{peer_id} ended the stream without an end frame")
            frame = decode_reply(payload)
            if isinstance(frame, ErrorFrame):
                raise RemoteError(frame.code, frame.message)
            if isinstance(frame, EndFrame):
                yield frame
                return
            if frame.index != next_index:
                raise MalformedMessage(f"{peer_id} sent token {frame.index}, expected {next_index}")
            next_index += 1
            yield frame
    finally:
        with trio.CancelScope(shield=True):
            await framed.close()
