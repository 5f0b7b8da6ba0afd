"""What the network costs over llama.cpp itself.

The same 128-token greedy chat answer, alternately from llama-cpp-python in this
process and through the network (client -> libp2p -> node process -> engine worker),
5 runs each. Prints decode tokens/s and time to first token of both, their ratio and
difference (medians), then one JSON line.

    .venv/bin/python bench/overhead.py [--runs 5] [--threads 2] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

from dinet.client.ask import Answer, ask
from dinet.client.network import open_network
from dinet.config import ClientSettings
from dinet.engine import default_model_path
from dinet.engine.llama._llama_cpp import load_llama
from dinet.node.local_mesh import start_node
from dinet.wire.messages import ChatMessage, GenerationParams

PROMPT = "Write a long, detailed story about a lighthouse keeper and a storm."


def in_process_run(llm, max_tokens: int) -> tuple[float, float, int]:
    """(ttft ms, decode tokens/s, tokens) for one streamed greedy answer.

    The KV cache is emptied first: llama-cpp-python would otherwise reuse the
    previous run's prompt and skip the prefill, which a dinet worker never does
    (its logits must not depend on what it served before).
    """
    llm.reset()
    start = time.perf_counter()
    stamps = []
    for chunk in llm.create_chat_completion(
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=max_tokens,
        stream=True,
        temperature=0.0,
        top_k=1,
        top_p=1.0,
        min_p=0.0,
        repeat_penalty=1.0,
    ):
        if chunk["choices"][0]["delta"].get("content"):
            stamps.append(time.perf_counter())
    return _figures(start, stamps)


async def network_run(network, max_tokens: int) -> tuple[float, float, int]:
    params = GenerationParams(messages=(ChatMessage(role="user", content=PROMPT),), max_tokens=max_tokens)
    start = time.perf_counter()
    stamps = []
    async for event in ask(network, params):
        if not isinstance(event, Answer):
            stamps.append(time.perf_counter())
    return _figures(start, stamps)


def _figures(start: float, stamps: list[float]) -> tuple[float, float, int]:
    ttft_ms = (stamps[0] - start) * 1e3
    decode = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
    return ttft_ms, decode, len(stamps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()

    llm = load_llama(default_model_path(), threads=args.threads)
    results: dict[str, list[tuple[float, float, int]]] = {"llama.cpp in-process": [], "dinet network": []}
    with tempfile.TemporaryDirectory(prefix="dinet-bench-") as root:
        node = start_node(Path(root) / "node", threads=args.threads)
        try:
            settings = ClientSettings(home=Path(root) / "client", bootstrap=[node.addr], mdns=False)

            async def bench() -> None:
                async with open_network(settings) as network:
                    await network.discover(None, None, timeout=20)
                    # One warm-up each, not counted: page cache, first allocations.
                    in_process_run(llm, 8)
                    await network_run(network, 8)
                    for _ in range(args.runs):
                        results["llama.cpp in-process"].append(in_process_run(llm, args.max_tokens))
                        results["dinet network"].append(await network_run(network, args.max_tokens))

            trio.run(bench)
        finally:
            node.stop()

    report(results, args)


def report(results: dict[str, list[tuple[float, float, int]]], args: argparse.Namespace) -> None:
    medians = {
        name: (
            statistics.median(r[0] for r in runs),
            statistics.median(r[1] for r in runs),
            statistics.median(r[2] for r in runs),
        )
        for name, runs in results.items()
    }
    base, net = medians["llama.cpp in-process"], medians["dinet network"]
    print(
        f"\n{args.runs} alternated runs each, {args.max_tokens}-token greedy chat answer, "
        f"{args.threads} threads, {os.cpu_count()} cores\n"
    )
    print(f"{'':24}{'ttft ms':>10}{'decode tok/s':>15}{'tokens':>8}")
    for name, (ttft, decode, tokens) in medians.items():
        print(f"{name:24}{ttft:>10.1f}{decode:>15.1f}{tokens:>8.0f}")
    ratio = net[1] / base[1]
    ttft_delta = net[0] - base[0]
    print(f"\ndecode ratio network/in-process: {ratio:.3f}   ttft difference: {ttft_delta:+.1f} ms")
    print("runs (ttft ms, tok/s):")
    for name, runs in results.items():
        print(f"  {name:24}" + "  ".join(f"({t:.0f}, {d:.1f})" for t, d, _ in runs))
    print(
        json.dumps(
            {
                "bench": "overhead",
                "runs": args.runs,
                "threads": args.threads,
                "max_tokens": args.max_tokens,
                "in_process_ttft_ms": round(base[0], 2),
                "network_ttft_ms": round(net[0], 2),
                "ttft_delta_ms": round(ttft_delta, 2),
                "in_process_tokens_per_s": round(base[1], 2),
                "network_tokens_per_s": round(net[1], 2),
                "decode_ratio": round(ratio, 4),
            }
        )
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
