"""Chains of pipeline-stage node processes over loopback, for bench/sharding.py.

Each configuration is its own small mesh of `din node` processes: a whole llama.cpp
node, and chains of 1, 2 and 3 torch stages (`--layers`). A client asks each in turn
(alternated rounds) for the same greedy answer and records the decode speed it sees.
While one configuration answers, the node processes of the others are paused
(SIGSTOP): each chain has the machine to itself, as it would in use. (Left running
idle, the other six nodes cost the 3-stage chain about a fifth of its speed here.)
"""

from __future__ import annotations

import os
import signal
import statistics
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trio

from dinet.client.chain import ChainPlan, ChainResult, run_chain
from dinet.client.network import Network, open_network
from dinet.config import ClientSettings
from dinet.node.local_mesh import NodeProcess, start_node
from dinet.p2p.streams import open_framed
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
from dinet.wire.shard import ShardStep, tensor_frames

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
            nodes.append(
                start_node(
                    root / f"chain{count}-{i}",
                    bootstrap=boot,
                    threads=threads,
                    extra_args=["--layers", f"{a}:{b}"],
                )
            )
        configs.append(Config(f"{count}-stage chain (torch)", nodes, SPLITS[count]))
    return configs


def _pause(configs: list[Config], *, pause: bool) -> None:
    for config in configs:
        for node in config.nodes:
            if node.process.poll() is None:
                os.kill(node.process.pid, signal.SIGSTOP if pause else signal.SIGCONT)


async def _alone(config: Config, configs: list[Config]) -> None:
    """Pause every other configuration's nodes and let this one's settle."""
    _pause([c for c in configs if c is not config], pause=True)
    _pause([config], pause=False)
    await trio.sleep(0.5)


async def connect(network: Network, configs: list[Config]) -> None:
    for config in configs:
        for node in config.nodes:
            await network.host.dial(node.addr)


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
    framed = await open_framed(network.host, peer_id, INFER_PROTOCOL, 10.0)
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
    """One decode step passed on between stages of a relayed chain: its header and one f32 row.

    (The hop from the last stage back to the first carries a token id: fewer bytes.)
    """
    row = np.zeros((1, N_EMBD), dtype=np.float32)
    return len(tensor_frames(ShardStep(session_id="0" * 32, seq=100, rows=1, dtype="f32"), row))


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


PROMPT = "Write a long, detailed story about a lighthouse keeper and a storm."


def measure_chains(
    *,
    rounds: int,
    max_tokens: int,
    threads: int,
    stage_counts: list[int],
    torch_whole_tokens_per_s: float,
    llama_whole_tokens_per_s: float,
) -> dict[str, object]:
    """Start the node processes, run alternated rounds, print a table; the figures as a dict."""
    with tempfile.TemporaryDirectory(prefix="dinet-bench-chains-") as tmp:
        root = Path(tmp)
        configs = start_configs(root, stage_counts, threads)
        try:

            async def run() -> None:
                settings = ClientSettings(home=root / "client", mdns=False)
                async with open_network(settings) as network:
                    await connect(network, configs)
                    for config in configs:  # warm-up: first answers fill caches and allocators
                        await run_once(network, config, PROMPT, 8)
                        config.speeds.clear()
                        config.texts.clear()
                    for _ in range(rounds):
                        for config in configs:
                            await _alone(config, configs)
                            await run_once(network, config, PROMPT, max_tokens)

            trio.run(run)
        finally:
            _pause(configs, pause=False)
            for config in configs:
                for node in config.nodes:
                    node.stop()

    hop_bytes = bytes_per_token_per_hop()
    whole_node = median(configs[0].speeds)
    rows = []
    print(f"\nchains of node processes over loopback, {rounds} alternated rounds, {threads} threads each")
    # The machine's speed drifts over minutes: a ratio of medians mixes moments, so each
    # round's answer is also set against the llama.cpp node's answer of the same round.
    print(
        f"{'configuration':<28}{'tok/s':>8}{'vs llama.cpp':>14}{'vs node, paired':>17}"
        f"{'bytes/tok/hop':>15} {'ms/hop':>9}"
    )
    for config in configs:
        speed = median(config.speeds)
        per_hop_ms = None
        if config.hops and speed and torch_whole_tokens_per_s:
            per_hop_ms = (1000 / speed - 1000 / torch_whole_tokens_per_s) / config.hops
        ratio = speed / llama_whole_tokens_per_s if llama_whole_tokens_per_s else 0.0
        paired = median([s / w for s, w in zip(config.speeds, configs[0].speeds, strict=True) if w])
        hop = "-" if per_hop_ms is None else f"{per_hop_ms:.2f}"
        size = hop_bytes if config.hops > 1 else "-"  # one stage passes nothing on: it loops itself
        print(f"{config.name:<28}{speed:>8.1f}{ratio:>14.2f}{paired:>17.2f}{size:>15} {hop:>9}")
        rows.append(
            {
                "name": config.name,
                "stages": config.hops,
                "tokens_per_s": round(speed, 2),
                "vs_llama_cpp_whole": round(ratio, 3),
                "vs_llama_node_paired": round(paired, 3),
                "per_hop_ms": None if per_hop_ms is None else round(per_hop_ms, 3),
                "runs": [round(s, 1) for s in config.speeds],
            }
        )
    texts = {t for c in configs[1:] for t in c.texts}
    print(
        f"every chain gave one and the same text: {len(texts) == 1}; "
        f"llama.cpp whole node over loopback: {whole_node:.1f} tok/s"
    )
    return {
        "rounds": rounds,
        "bytes_per_token_per_hop": hop_bytes,
        "chains_agree": len(texts) == 1,
        "configs": rows,
    }
