"""The client of bench/chain_wan.py, run inside a lab namespace: it finds a 3-stage chain
through its bootstrap peer, then answers each JSON line on stdin ({"prompt", "draft",
"max_tokens"}) through that chain and prints one JSON line per answer: the token ids,
time to first token, decode tok/s (from the first token to the last) and trips round
the ring (distinct step numbers among the last stage's tokens).

    python bench/_chain_wan_client.py --home DIR --bootstrap MULTIADDR
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import trio

from dinet.client.chain import Chain, StageRules, plan_chain
from dinet.client.network import open_network
from dinet.config import ClientSettings
from dinet.wire.messages import ChatMessage, GenerationParams


async def main(home: Path, bootstrap: str) -> None:
    settings = ClientSettings(home=home, bootstrap=[bootstrap], mdns=False, discover_timeout_s=60)
    async with open_network(settings) as network:
        plan = await plan_chain(network, None, None, timeout=60)
        print(json.dumps({"ready": True, "chain": list(plan.route.peers)}), flush=True)
        for line in sys.stdin:
            ask = json.loads(line)
            params = GenerationParams(
                messages=(ChatMessage(role="user", content=ask["prompt"]),), max_tokens=ask["max_tokens"]
            )
            chain = Chain(network, plan, params, "f32", rules=StageRules(draft=ask["draft"]))
            started = time.perf_counter()
            await chain.begin()
            tokens: list[int] = []
            steps: set[int] = set()
            first = last = 0.0
            try:
                while True:
                    sampled = await chain.next_sampled()
                    last = time.perf_counter()
                    first = first or last
                    steps.add(sampled.seq)
                    tokens.append(sampled.token_id)
                    if sampled.finish_reason is not None:
                        break
            finally:
                await chain.close(clean=True)
            decode_s = last - first
            result = {
                "tokens": tokens,
                "ttft_s": first - started,
                "decode_tps": (len(tokens) - 1) / decode_s if decode_s > 0 else 0.0,
                "trips": len(steps),
                "repairs": chain.repairs,
            }
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--bootstrap", required=True)
    args = parser.parse_args()
    trio.run(main, args.home, args.bootstrap)
