"""A dinet client that bench/reach.py drives line by line, run inside a NAT lab host.

    python bench/_reach_client.py HOME BOOTSTRAP [--no-hole-punching]

It joins through BOOTSTRAP and answers each command on stdin with one JSON line:

    ask PEER MODEL_HASH MAX_TOKENS PROMPT
        -> one greedy answer from PEER only, timed from the call of `ask()` (a network
           already joined): {"ttft_ms", "decode_tok_s", "tokens", "text", "answer_ttft_ms",
           "link_first", "link_last"} (links: how this client reached PEER at the first
           and at the last token)
    punch PEER MODEL_HASH MAX_TOKENS SECONDS PROMPT
        -> the same answer while watching the link to PEER every 20 ms, and after it until
           the link is direct or SECONDS have passed since the call:
           {... as ask ..., "relayed_s", "direct_s"} (seconds from the call until the link
           was first seen relayed, direct; null if never)
    direct PEER SECONDS -> {"link"}: waits up to SECONDS for the link to PEER to be direct
    counters            -> this client's reach counters (hole punches)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import trio

from dinet.cli._common import setup_logging
from dinet.client.ask import Answer, ask
from dinet.client.network import Network, open_network
from dinet.client.options import AskOptions
from dinet.config import ClientSettings
from dinet.errors import DinetError
from dinet.wire.ids import ModelHash, PeerId
from dinet.wire.messages import ChatMessage, GenerationParams

WATCH_S = 0.02


async def answer(network: Network, peer: PeerId, model_hash: str, max_tokens: int, prompt: str) -> dict:
    params = GenerationParams(messages=(ChatMessage(role="user", content=prompt),), max_tokens=max_tokens)
    options = AskOptions(
        model_hash=ModelHash(model_hash), only_peers=frozenset({peer}), discover_timeout_s=30.0
    )
    started = time.perf_counter()
    first_at = last_at = None
    count, link_first, final = 0, None, None
    async for event in ask(network, params, options):
        now = time.perf_counter()
        if isinstance(event, Answer):
            final = event
            continue
        if first_at is None:
            first_at, link_first = now, network.host.link_kind(peer)
        last_at, count = now, count + 1
    assert final is not None and first_at is not None and last_at is not None
    return {
        "ttft_ms": (first_at - started) * 1e3,
        "decode_tok_s": (count - 1) / (last_at - first_at) if count > 1 and last_at > first_at else 0.0,
        "tokens": count,
        "text": final.text,
        "answer_ttft_ms": final.ttft_ms,  # from after discovery (ask's own figure)
        "peer_id": final.peer_id,
        "link_first": link_first,
        "link_last": network.host.link_kind(peer),
    }


async def punch(
    network: Network, peer: PeerId, model_hash: str, max_tokens: int, seconds: float, prompt: str
) -> dict:
    """An answer while the link is watched: when it was relayed, when direct."""
    started = time.perf_counter()
    seen: dict[str, float] = {}
    reply: dict = {}

    async def watch() -> None:
        while "direct" not in seen:
            kind = network.host.link_kind(peer)
            if kind is not None and kind not in seen:
                seen[kind] = time.perf_counter() - started
            await trio.sleep(WATCH_S)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        reply.update(await answer(network, peer, model_hash, max_tokens, prompt))
        with trio.move_on_at(trio.current_time() + max(0.0, started + seconds - time.perf_counter())):
            while "direct" not in seen:  # noqa: ASYNC110 (the punch is the host's)
                await trio.sleep(WATCH_S)
        nursery.cancel_scope.cancel()
    return {**reply, "relayed_s": seen.get("relayed"), "direct_s": seen.get("direct")}


async def wait_direct(network: Network, peer: PeerId, seconds: float) -> dict:
    with trio.move_on_after(seconds):
        while network.host.link_kind(peer) != "direct":  # noqa: ASYNC110 (the punch is the host's)
            await trio.sleep(0.1)
    return {"link": network.host.link_kind(peer)}


async def command(network: Network, line: str) -> dict:
    name, *args = line.split(" ", 5)
    if name == "ask":
        peer, model_hash, max_tokens, prompt = line.split(" ", 4)[1:]
        return await answer(network, PeerId(peer), model_hash, int(max_tokens), prompt)
    if name == "punch":
        peer, model_hash, max_tokens, seconds, prompt = args
        return await punch(network, PeerId(peer), model_hash, int(max_tokens), float(seconds), prompt)
    if name == "direct":
        return await wait_direct(network, PeerId(args[0]), float(args[1]))
    if name == "counters":
        return dict(network.host.reach_counters())
    return {"error": f"unknown command {name!r}"}


async def main(home: str, bootstrap: str, hole_punching: bool) -> None:
    settings = ClientSettings(home=Path(home), bootstrap=[bootstrap], mdns=False, hole_punching=hole_punching)
    async with open_network(settings) as network:
        print(json.dumps({"ready": network.peer_id}), flush=True)
        while line := await trio.to_thread.run_sync(sys.stdin.readline):
            try:
                reply = await command(network, line.strip())
            except DinetError as exc:
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    setup_logging(0)
    home, bootstrap, *flags = sys.argv[1:]
    trio.run(main, home, bootstrap, "--no-hole-punching" not in flags)
