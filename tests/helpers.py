"""Helpers for tests that talk to nodes below the client API (raw frames, raw hosts)."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from dinet.client.ask import Answer, ask
from dinet.client.options import AskOptions
from dinet.node.local_mesh import child_pids
from dinet.p2p.host import PeerHost, open_host
from dinet.p2p.streams import FramedStream, open_framed
from dinet.wire.ids import INFER_PROTOCOL
from dinet.wire.keys import SigningKey
from dinet.wire.manifest import MANIFEST_TTL_S, Load, Manifest
from dinet.wire.messages import (
    ChatMessage,
    EndFrame,
    ErrorFrame,
    GenerationParams,
    InferRequest,
    QueuedFrame,
    TokenFrame,
    decode_reply,
)

OPEN_TIMEOUT_S = 60.0  # generous: some tests open streams to a node they are flooding


@asynccontextmanager
async def raw_host(key: SigningKey | None = None) -> AsyncIterator[PeerHost]:
    """A bare dinet host on loopback (no DHT, no gossip), with a fresh identity unless given one."""
    async with open_host(key or SigningKey.generate(), ["/ip4/127.0.0.1/tcp/0"]) as host:
        yield host


async def open_stream(host: PeerHost, addr: str, protocol: str) -> FramedStream:
    """A framed stream of `protocol` to the peer at `addr`, dialed first."""
    peer_id = await host.dial(addr)
    return await open_framed(host, peer_id, protocol, OPEN_TIMEOUT_S)


async def open_infer(host: PeerHost, addr: str) -> FramedStream:
    return await open_stream(host, addr, INFER_PROTOCOL)


def chat(content: str, **params: object) -> GenerationParams:
    return GenerationParams(messages=(ChatMessage(role="user", content=content),), **params)  # type: ignore[arg-type]


Reply = TokenFrame | QueuedFrame | EndFrame | ErrorFrame


async def read_replies(framed: FramedStream, timeout: float = 60.0) -> list[Reply]:
    """Every frame until the stream closes (or an end/error frame arrives)."""
    replies: list[Reply] = []
    with trio.fail_after(timeout):
        while (payload := await framed.receive()) is not None:
            replies.append(decode_reply(payload))
            if isinstance(replies[-1], EndFrame | ErrorFrame):  # a queued frame only says 'wait'
                break
    return replies


async def request_replies(host: PeerHost, addr: str, params: GenerationParams) -> list:
    framed = await open_infer(host, addr)
    await framed.send(InferRequest(request_id="test", params=params))
    replies = await read_replies(framed)
    await framed.close()
    return replies


async def resumed_text(host: PeerHost, peer_id: str, params: GenerationParams, prefix: Sequence[int]) -> str:
    """What `peer_id` answers to `params` resumed after the completion tokens `prefix`, as
    a peer taking over mid-answer is asked: the text after them."""
    framed = await open_framed(host, peer_id, INFER_PROTOCOL, OPEN_TIMEOUT_S)
    resumed = params.model_copy(update={"prefix_tokens": tuple(prefix)})
    await framed.send(InferRequest(request_id=uuid.uuid4().hex, params=resumed))
    replies = await read_replies(framed)
    await framed.close()
    assert isinstance(replies[-1], EndFrame), replies[-1]
    return "".join(r.text for r in replies if isinstance(r, TokenFrame))


def worker_pids(node_pid: int) -> list[int]:
    """A node's generation worker(s): its children running `worker_process` (a node
    serving an embedding model has an `embed_process` child as well)."""
    return [pid for pid in child_pids(node_pid) if b"worker_process" in _cmdline(pid)]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # it has just ended
        return b""


def is_root() -> bool:
    return os.geteuid() == 0


async def answer_to(
    network, params: GenerationParams, *, on_attempt: Callable[[str], None] | None = None, **options: Any
) -> tuple[str, Answer]:
    """The streamed text and the final Answer of one `ask` (`options`: AskOptions' fields);
    they must agree."""
    text, answer = "", None
    async for event in ask(network, params, AskOptions(**options), on_attempt=on_attempt):
        if isinstance(event, Answer):
            answer = event
        else:
            text += event.text
    assert answer is not None and answer.text == text
    return text, answer


def make_manifest(key, issued_at=None, ttl=MANIFEST_TTL_S, **changes):
    """An unsigned manifest of `key`'s peer with plain figures; `changes` replace fields."""
    now = time.time() if issued_at is None else issued_at
    fields = dict(
        peer_id=key.peer_id,
        version="dinet/0.1.0",
        region="test",
        addrs=(),
        models=(),
        max_concurrent=1,
        tokens_per_s=50.0,
        ttft_ms=20.0,
        price_per_token=0.0,
        load=Load(active=0, queued=0),
        issued_at=now,
        expires_at=now + ttl,
    )
    fields.update(changes)
    return Manifest(**fields)
