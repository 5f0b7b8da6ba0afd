"""What the sandbox costs a chain: stages whose torch code runs in the node's own thread
(`--no-sandbox`, the way before) against stages that run it in a sandboxed worker
process (the default), fed over a pipe.

Two 3-stage chains of `din node --layers` processes on loopback (`bench/_chains.py`),
the same greedy answer asked of each in alternated rounds, each chain alone on the
machine while it answers (the other one's nodes paused). Decode tok/s as the client
sees tokens arrive: medians, and the median of the per-round ratios.

Prints a table, then one JSON line.

    .venv/bin/python bench/stage_sandbox.py [--rounds 8] [--threads 2] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import trio

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _chains import PROMPT, SPLITS, Config, _alone, _pause, connect, median, run_once
from dinet.client.network import open_network
from dinet.config import ClientSettings
from dinet.node.local_mesh import start_node


def chain(root: Path, name: str, threads: int, extra: list[str]) -> Config:
    nodes = []
    for i, (a, b) in enumerate(SPLITS[3]):
        boot = [nodes[0].addr] if nodes else []
        args = ["--layers", f"{a}:{b}", *extra]
        nodes.append(start_node(root / f"{name}-{i}", bootstrap=boot, threads=threads, extra_args=args))
    return Config(name, nodes, SPLITS[3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dinet-bench-sandbox-") as tmp:
        root = Path(tmp)
        configs = [
            chain(root, "in the node (--no-sandbox)", args.threads, ["--no-sandbox"]),
            chain(root, "sandboxed worker", args.threads, []),
        ]
        try:

            async def run() -> None:
                async with open_network(ClientSettings(home=root / "client", mdns=False)) as network:
                    await connect(network, configs)
                    for config in configs:  # warm-up
                        await _alone(config, configs)
                        await run_once(network, config, PROMPT, 8)
                        config.speeds.clear()
                        config.texts.clear()
                    for r in range(args.rounds):
                        for config in configs if r % 2 == 0 else configs[::-1]:
                            await _alone(config, configs)
                            await run_once(network, config, PROMPT, args.max_tokens)

            trio.run(run)
        finally:
            _pause(configs, pause=False)
            for config in configs:
                for node in config.nodes:
                    node.stop()
    inside, worker = configs
    ratios = [w / i for i, w in zip(inside.speeds, worker.speeds, strict=True) if i > 0]
    print(f"3-stage chain, {args.rounds} alternated rounds, {args.max_tokens} tokens, {args.threads} threads")
    print(f"{'stages':<28} {'median tok/s':>12}   runs")
    for config in configs:
        runs = ", ".join(f"{speed:.1f}" for speed in config.speeds)
        print(f"{config.name:<28} {median(config.speeds):>12.1f}   {runs}")
    ratio = statistics.median(ratios) if ratios else 0.0
    same = inside.texts == worker.texts and len(inside.texts) == 1
    print(f"sandboxed / in the node: {ratio:.3f} (median of per-round ratios); same answer: {same}")
    print(
        json.dumps(
            {
                "bench": "stage_sandbox",
                "rounds": args.rounds,
                "in_node_tokens_per_s": round(median(inside.speeds), 2),
                "sandboxed_tokens_per_s": round(median(worker.speeds), 2),
                "ratio": round(ratio, 4),
                "same_answer": same,
            }
        )
    )


if __name__ == "__main__":
    main()
