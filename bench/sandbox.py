"""What the engine sandbox costs: worker start time and decode speed, with and without it.

Alternates sandboxed and plain workers (`WorkerEngine(sandbox=...)`), each started
fresh and asked the same greedy chat answer. Prints medians of time from spawn to
ready, time to first token and decode tokens/s for both, the protections in force,
then one JSON line.

    .venv/bin/python bench/sandbox.py [--runs 5] [--threads 2] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import trio

from dinet.engine import WorkerEngine, default_model_path
from dinet.engine.sandbox import SandboxStatus
from dinet.wire.messages import ChatMessage, EndFrame, GenerationParams

PROMPT = "Write a long, detailed story about a lighthouse keeper and a storm."


async def one_run(sandbox: bool, threads: int, max_tokens: int) -> tuple[list[float], SandboxStatus | None]:
    """([start ms, ttft ms, decode tokens/s], sandbox status) of one fresh worker."""
    params = GenerationParams(
        messages=(ChatMessage(role="user", content=PROMPT),), max_tokens=max_tokens, temperature=0.0
    )
    began = time.perf_counter()
    async with WorkerEngine(default_model_path(), threads=threads, sandbox=sandbox) as engine:
        ready_ms = (time.perf_counter() - began) * 1000
        async for frame in engine.generate(params):
            if isinstance(frame, EndFrame):
                return [ready_ms, frame.ttft_ms, frame.tokens_per_s], engine.sandbox_status
    raise RuntimeError("the worker ended without an answer")


FIGURES = ("start_ms", "ttft_ms", "tokens_per_s")


async def main(runs: int, threads: int, max_tokens: int) -> dict[str, object]:
    rows: dict[str, list[list[float]]] = {"sandboxed": [], "plain": []}
    status: SandboxStatus | None = None
    for _ in range(runs):
        for side in rows:
            figures, got = await one_run(side == "sandboxed", threads, max_tokens)
            rows[side].append(figures)
            status = got if side == "sandboxed" else status
    medians = {
        side: {name: round(statistics.median(r[i] for r in found), 2) for i, name in enumerate(FIGURES)}
        for side, found in rows.items()
    }
    for side, m in medians.items():
        print(f"{side:10} start {m['start_ms']:8.1f} ms   ttft {m['ttft_ms']:7.1f} ms   "
              f"decode {m['tokens_per_s']:6.1f} tok/s")  # fmt: skip
    protections = status.model_dump(mode="json") if status is not None else None
    print("protections:", json.dumps(protections))
    return {"runs": runs, "threads": threads, "max_tokens": max_tokens, **medians, "protections": protections}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    print(json.dumps(trio.run(main, args.runs, args.threads, args.max_tokens)))
