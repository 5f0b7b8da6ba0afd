"""Chains of pipeline-stage node processes over loopback, for bench/sharding.py.

Each configuration is its own small mesh of `din node` processes: a whole llama.cpp
node, and chains of 1, 2 and 3 torch stages (`--layers`). A client asks each in turn
(alternated rounds) for the same greedy answer and records the decode speed it sees.
"""

from __future__ import annotations

import statistics
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from dinet.client.chain import ChainPlan, ChainResult, run_chain
from dinet.client.network import Network
from dinet.node.local_mesh import NodeProcess, start_node
from dinet.p2p.discovery import dial, peer_info_from
from dinet.p2p.streams import FramedStream
from dinet.routing.shard import Route, StageOffer
from dinet.wire.ids import INFER_PROTOCOL
from dinet.wire.messages import (
    ChatMessage,
    GenerationParams,
    InferRequest,
    QueuedFrame,
    TokenFrame,
    decode_reply,
)
from dinet.wire.shard import ShardHidden, ShardStep, tensor_frames

N_LAYERS = 30
N_EMBD = 576
SPLITS = {1: [(0, 30)], 2: [(0, 15), (15, 30)], 3: [(0, 10), (10, 20), (20, 30)]}


@dataclass
class Config:
    name: str
    nodes: list[NodeProcess]
    spans: list[tuple[int, int]] = field(default_factory=list)  # empty: a whole llama.cpp node
    speeds: list[float] = field(default_factory=list)
    texts: set[str] = field(default_factory=set)

    @property
    def hops(self) -> int:
        return len(self.spans)

    def plan(self) -> ChainPlan:
        first = self.nodes[0]
        stages = tuple(StageOffer(n.peer_id, a, b) for n, (a, b) in zip(self.nodes, self.spans, strict=True))
        return ChainPlan(Route(stages, 0.0), first.model_id, first.model_hash, N_LAYERS)


def start_configs(root: Path, stages: list[int], threads: int) -> list[Config]:
    configs = [Config("llama.cpp whole node", [start_node(root / "whole", threads=threads)])]
    for count in stages:
        nodes: list[NodeProcess] = []
        for i, (a, b) in enumerate(SPLITS[count]):
            boot = [nodes[0].addr] if nodes else []
            nodes.append(start_node(root / f"chain{count}-{i}", bootstrap=boot, threads=threads,
                                    extra_args=["--layers", f"{a}:{b}"]))
        configs.append(Config(f"{count}-stage chain (torch)", nodes, SPLITS[count]))
    return configs


async def connect(network: Network, configs: list[Config]) -> None:
    for config in configs:
        for node in config.nodes:
            await dial(network.host, peer_info_from(node.addr))


def params(prompt: str, max_tokens: int) -> GenerationParams:
    return GenerationParams(messages=(ChatMessage(role="user", content=prompt),), max_tokens=max_tokens)


async def run_once(network: Network, config: Config, prompt: str, max_tokens: int) -> None:
    """One greedy answer; its decode tokens/s (first token to last, as the client sees it)."""
    first_at = last_at = 0.0
    count, text = 0, ""
    if not config.spans:
        async for frame in _infer(network, config.nodes[0].peer_id, params(prompt, max_tokens)):
            count, last_at = count + 1, trio.current_time()
            first_at = first_at or last_at
            text += frame.text
    else:
        async for item in run_chain(network, config.plan(), params(prompt, max_tokens)):
            if isinstance(item, TokenFrame):
                count, last_at = count + 1, trio.current_time()
                first_at = first_at or last_at
                text += item.text
            else:
                assert isinstance(item, ChainResult)
    config.speeds.append((count - 1) / (last_at - first_at) if count > 1 and last_at > first_at else 0.0)
    config.texts.add(text)


async def _infer(network: Network, peer_id: str, request: GenerationParams) -> AsyncIterator[TokenFrame]:
    """A plain /dinet/infer/1 answer, without the client's retry and back-off logic."""
    stream = await network.host.new_stream(ID.from_base58(peer_id), [TProtocol(INFER_PROTOCOL)])
    framed = FramedStream(stream)
    await framed.send(InferRequest(request_id=uuid.uuid4().hex, params=request))
    try:
        while (payload := await framed.receive()) is not None:
            reply = decode_reply(payload)
            if isinstance(reply, TokenFrame):
                yield reply
            elif not isinstance(reply, QueuedFrame):
                return  # end (its receipt is left unsigned) or error
    finally:
        await framed.reset()


def bytes_per_token_per_hop() -> int:
    """One decode step on a middle hop: the step sent (header + f32 row) and the hidden state back."""
    row = np.zeros((1, N_EMBD), dtype=np.float32)
    sent = tensor_frames(ShardStep(session_id="0" * 32, seq=100, rows=1, dtype="f32"), row)
    back = tensor_frames(ShardHidden(seq=100, rows=1, dtype="f32"), row)
    return len(sent) + len(back)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0
