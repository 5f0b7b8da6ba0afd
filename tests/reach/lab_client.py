"""A dinet client that a NAT lab test drives line by line, run inside a lab host.

    python -m tests.reach.lab_client HOME BOOTSTRAP MODEL_HASH [--no-hole-punching] [--swarm-key=FILE]

It joins through BOOTSTRAP and answers each command on stdin with one JSON line:

    ask PROMPT          -> {"text", "peer_id", "link"}: a greedy answer from a peer serving
                           MODEL_HASH, and how this client is connected to it afterwards
    direct PEER SECONDS -> {"link"}: waits up to SECONDS for the link to PEER to be direct
    counters            -> this client's reach counters (hole punches)

A test asks, waits for the connection to be punched, resets the lab's WAN counters, asks
again: what crossed the WAN between the two homes is then the second answer's path.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import trio

from dinet.cli._common import setup_logging
from dinet.client.ask import Answer, ask
from dinet.client.network import Network, open_network
from dinet.client.options import AskOptions
from dinet.config import ClientSettings
from dinet.wire.ids import ModelHash, PeerId
from dinet.wire.messages import ChatMessage, GenerationParams

MAX_TOKENS = 24


async def answer(network: Network, model_hash: ModelHash, prompt: str) -> dict[str, object]:
    params = GenerationParams(messages=(ChatMessage(role="user", content=prompt),), max_tokens=MAX_TOKENS)
    text, peer = "", None
    async for event in ask(network, params, AskOptions(model_hash=model_hash, discover_timeout_s=30.0)):
        if isinstance(event, Answer):
            peer = event.peer_id
        else:
            text += event.text
    assert peer is not None
    return {"text": text, "peer_id": peer, "link": network.host.link_kind(peer)}


async def wait_direct(network: Network, peer: PeerId, seconds: float) -> dict[str, object]:
    with trio.move_on_after(seconds):
        while network.host.link_kind(peer) != "direct":  # noqa: ASYNC110 (the punch is the host's)
            await trio.sleep(0.1)
    return {"link": network.host.link_kind(peer)}


async def main(home: str, bootstrap: str, model_hash: str, flags: list[str]) -> None:
    keys = [Path(f.removeprefix("--swarm-key=")) for f in flags if f.startswith("--swarm-key=")]
    settings = ClientSettings(
        home=Path(home),
        bootstrap=[bootstrap],
        mdns=False,
        hole_punching="--no-hole-punching" not in flags,
        swarm_key=keys[0] if keys else None,
    )
    async with open_network(settings) as network:
        print(json.dumps({"ready": network.peer_id}), flush=True)
        while line := await trio.to_thread.run_sync(sys.stdin.readline):
            command, _, rest = line.strip().partition(" ")
            if command == "ask":
                reply = await answer(network, ModelHash(model_hash), rest)
            elif command == "direct":
                peer, seconds = rest.split()
                reply = await wait_direct(network, PeerId(peer), float(seconds))
            elif command == "counters":
                reply = dict(network.host.reach_counters())
            else:
                reply = {"error": f"unknown command {command!r}"}
            print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    setup_logging(0)  # as `din` does: py-libp2p's routine failures stay out of the test's output
    home, bootstrap, model_hash, *flags = sys.argv[1:]
    trio.run(main, home, bootstrap, model_hash, flags)
