"""Helpers for tests that talk to nodes below the client API (raw frames, raw hosts)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
from libp2p.abc import IHost
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from dinet.client.ask import Answer, ask
from dinet.node.local_mesh import child_pids
from dinet.p2p.discovery import dial, peer_info_from
from dinet.p2p.host import build_host, running_host
from dinet.p2p.streams import FramedStream
from dinet.wire.ids import INFER_PROTOCOL
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


@asynccontextmanager
async def raw_host() -> AsyncIterator[IHost]:
    """A bare dinet-style libp2p host with a fresh identity."""
    host = build_host(create_new_key_pair())
    async with running_host(host, ["/ip4/127.0.0.1/tcp/0"]):
        yield host


async def open_infer(host: IHost, addr: str) -> FramedStream:
    info = peer_info_from(addr)
    await dial(host, info)
    stream = await host.new_stream(ID.from_base58(info.peer_id.to_base58()), [TProtocol(INFER_PROTOCOL)])
    return FramedStream(stream)


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


async def request_replies(host: IHost, addr: str, params: GenerationParams) -> list:
    framed = await open_infer(host, addr)
    await framed.send(InferRequest(request_id="test", params=params))
    replies = await read_replies(framed)
    await framed.close()
    return replies


worker_pids = child_pids  # a node's engine worker


def is_root() -> bool:
    return os.geteuid() == 0


async def answer_to(network, params: GenerationParams, **kwargs: object) -> tuple[str, Answer]:
    """The streamed text and the final Answer of one `ask`; they must agree."""
    text, answer = "", None
    async for event in ask(network, params, **kwargs):  # type: ignore[arg-type]
        if isinstance(event, Answer):
            answer = event
        else:
            text += event.text
    assert answer is not None and answer.text == text
    return text, answer
