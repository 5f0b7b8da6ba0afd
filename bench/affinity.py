"""Cache-aware routing: many chats at once through one gateway over three nodes, with the
client's prefix affinity on and off.

Three `din node` processes (one llama.cpp thread each, prefix cache on) and two
`din gateway` processes joined to them: one routes with prefix affinity (the default),
one with `--no-prefix-affinity`. Conversations of five turns, each opening with a
~500-token system prompt of its own (`bench/chat.py`), run `--parallel` at a time through
one gateway, then as many through the other, alternating for `--rounds` rounds (ABBA...).
Prints the median time to first token (turns 2-5, and all turns) and the aggregate
streamed tokens/s of each, their ratio, then one JSON line.

    .venv/bin/python bench/affinity.py [--rounds 2] [--conversations 6] [--parallel 6]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from chat import TURNS, streamed_turn, system_prompt
from dinet.node.local_mesh import LocalMesh
from gateway import start_gateway

MODES = ("affinity on", "affinity off")


def conversation(url: str, model: str, index: int, max_tokens: int) -> list[tuple[float, int]]:
    """(time to first token in ms, chunks) of each turn of one conversation."""
    messages = [{"role": "system", "content": system_prompt(index)}]
    turns = []
    with httpx.Client(timeout=600) as client:
        for question in TURNS:
            messages.append({"role": "user", "content": question})
            ttft, text, chunks = streamed_turn(client, url, model, messages, max_tokens)
            turns.append((ttft, chunks))
            messages.append({"role": "assistant", "content": text})
    return turns


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--conversations", type=int, default=6, help="per round and mode")
    # More chats at once than nodes: with as many or fewer, plain load balancing sends each
    # chat's next turn back to the node that just went idle, which holds it anyway.
    parser.add_argument("--parallel", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()

    runs: dict[str, list[list[tuple[float, int]]]] = {mode: [] for mode in MODES}
    busy_s = dict.fromkeys(MODES, 0.0)
    with tempfile.TemporaryDirectory(prefix="dinet-bench-affinity-") as root_name:
        root = Path(root_name)
        with LocalMesh(root / "mesh", size=3, threads=1) as mesh:
            gateways = {}
            try:
                for mode, flag in zip(MODES, ("--prefix-affinity", "--no-prefix-affinity"), strict=True):
                    process, url = start_gateway(root / mode.replace(" ", "-"), mesh.bootstrap[0], (flag,))
                    gateways[mode] = (process, url)
                model = mesh.nodes[0].model_id
                for mode in MODES:  # warm-up: each gateway finds all three nodes
                    conversation(gateways[mode][1], model, -1 - len(runs[mode]), 4)
                index = 0
                for round_ in range(args.rounds):
                    order = MODES if round_ % 2 == 0 else tuple(reversed(MODES))
                    for mode in order:
                        url = gateways[mode][1]
                        first = index
                        index += args.conversations
                        started = time.perf_counter()
                        with ThreadPoolExecutor(args.parallel) as pool:
                            done = pool.map(
                                lambda i, url=url: conversation(url, model, i, args.max_tokens),
                                range(first, index),
                            )
                            runs[mode] += list(done)
                        busy_s[mode] += time.perf_counter() - started
            finally:
                for process, _ in gateways.values():
                    process.terminate()
                    process.wait(15)
    report(runs, busy_s, args)


def report(runs: dict[str, list[list[tuple[float, int]]]], busy_s: dict[str, float], args) -> None:
    on, off = MODES
    later = {m: statistics.median(t for conv in runs[m] for t, _ in conv[1:]) for m in MODES}
    every = {m: statistics.median(t for conv in runs[m] for t, _ in conv) for m in MODES}
    tps = {m: sum(c for conv in runs[m] for _, c in conv) / busy_s[m] for m in MODES}
    print(
        f"\n{args.rounds} rounds x {args.conversations} conversations of {len(TURNS)} turns per mode, "
        f"{args.parallel} at a time, modes alternated; 3 nodes of 1 thread; {args.max_tokens}-token answers"
    )
    print(f"  {'':28}{on:>14}{off:>14}{'on / off':>10}")
    rows = (("TTFT turns 2-5, median ms", later, 0), ("TTFT all turns, median ms", every, 0))
    for name, values, digits in (*rows, ("aggregate tokens/s", tps, 1)):
        ratio = values[on] / values[off]
        print(f"  {name:28}{values[on]:>14.{digits}f}{values[off]:>14.{digits}f}{ratio:>10.2f}")
    print(f"  target: TTFT of turns 2-5 with affinity at most half of without: {later[on] / later[off]:.2f}")
    print(
        json.dumps(
            {
                "bench": "affinity",
                "conversations_per_mode": len(runs[MODES[0]]),
                "parallel": args.parallel,
                "ttft_turns_2_5_ms": {m: round(v, 1) for m, v in later.items()},
                "ttft_all_ms": {m: round(v, 1) for m, v in every.items()},
                "tokens_per_s": {m: round(v, 2) for m, v in tps.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
