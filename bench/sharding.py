"""Decode speed of pipeline sharding: the engines, then chains of stage processes.

1. Engines: the same greedy chat answer from llama.cpp whole and from our torch
   layer-range engine whole (int4 weights and float32 weights), each engine in its own
   process (so no engine's threads spin against another's), runs alternated, medians.
   Also the cost of the torch engine's parts per decode step (30 blocks, output head)
   and the bytes a hidden state costs per token per hop.
2. Chains (`bench/_chains.py`): `din node` processes over loopback, a whole llama.cpp
   node and 1-, 2- and 3-stage torch chains (`--layers`), relayed in a ring, rounds
   alternated, medians of decode tok/s as the client sees tokens arrive, and each
   chain's answers set against the llama.cpp node's answer of the same round (the
   machine's speed drifts over minutes); bytes per token per hop; per-hop overhead =
   (chain time per token - torch whole time per token) / hops.

Prints tables, then one JSON line.

    .venv/bin/python bench/sharding.py [--runs 5] [--threads 2] [--max-tokens 128] [--chain-rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ENGINES = ("llama.cpp", "torch int4", "torch f32")
PROMPT = "Write a long, detailed story about a lighthouse keeper and a storm."
N_EMBD = 576


def child(engine: str, threads: int, max_tokens: int) -> None:
    """Load one engine, then answer each line on stdin with one measured run (a JSON line)."""
    from dinet.engine import default_model_path
    from dinet.engine.llama._generator import Generator
    from dinet.engine.llama._llama_cpp import load_llama
    from dinet.engine.torch._generator import TorchGenerator
    from dinet.engine.torch.shard import LayerSpan
    from dinet.wire.messages import ChatMessage, EndFrame, GenerationParams

    path = default_model_path()
    generator: Generator | TorchGenerator
    if engine == "llama.cpp":
        generator = Generator(load_llama(path, threads=threads), "m")
    else:
        int4 = engine == "torch int4"
        generator = TorchGenerator.load(path, [LayerSpan(0, 30)], threads=threads, int4=int4)
    params = GenerationParams(messages=(ChatMessage(role="user", content=PROMPT),), max_tokens=max_tokens)
    ends: list[EndFrame] = []

    def keep(frame: object) -> None:
        if isinstance(frame, EndFrame):
            ends.append(frame)

    generator.run(params.model_copy(update={"max_tokens": 8}), time.perf_counter(), keep)  # warm-up
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip() == "parts" and isinstance(generator, TorchGenerator):
            print(json.dumps(torch_parts(generator)), flush=True)
            continue
        generator.run(params, time.perf_counter(), keep)
        end = ends[-1]
        print(
            json.dumps(
                {
                    "ttft_ms": end.ttft_ms,
                    "tokens_per_s": end.tokens_per_s,
                    "tokens": end.usage.completion_tokens,
                }
            ),
            flush=True,
        )


def torch_parts(generator: object) -> dict[str, float]:
    """Milliseconds per decode step in the blocks and in the output head (median of 64)."""
    import torch

    from dinet.engine.torch._block import run_blocks

    model = generator._models[0]  # type: ignore[attr-defined]
    session = model.new_session()
    session.forward(torch.arange(100, 164))  # a 64-token context
    x = model.embed(torch.tensor([42]))
    blocks, head = [], []
    with torch.inference_mode():
        for _ in range(64):
            start = time.perf_counter()
            shape, rotary = model.shape, model.rotary[64:65]
            h = run_blocks(
                x,
                model.blocks,
                rotary,
                session._k,
                session._v,
                64,
                None,
                shape.n_head,
                shape.n_head_kv,
                shape.rms_eps,
            )
            mid = time.perf_counter()
            model.output(torch.nn.functional.rms_norm(h, (N_EMBD,), model.output_norm, model.shape.rms_eps))
            blocks.append(mid - start)
            head.append(time.perf_counter() - mid)
    return {"blocks_ms": 1e3 * statistics.median(blocks), "head_ms": 1e3 * statistics.median(head)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--chain-rounds", type=int, default=5, help="0: skip the chains of node processes")
    parser.add_argument("--stages", default="1,2,3", help="chain lengths to measure")
    parser.add_argument("--child", choices=ENGINES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.threads, args.max_tokens)
        return

    procs = {}
    for engine in ENGINES:
        procs[engine] = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--child",
                engine,
                "--threads",
                str(args.threads),
                "--max-tokens",
                str(args.max_tokens),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
    try:
        for proc in procs.values():
            _ask(proc, None)  # wait until loaded and warmed up
        results: dict[str, list[dict[str, float]]] = {engine: [] for engine in ENGINES}
        for _ in range(args.runs):
            for engine, proc in procs.items():  # one engine at a time: they never overlap
                results[engine].append(_ask(proc, "run"))
        parts = _ask(procs["torch int4"], "parts")
    finally:
        for proc in procs.values():
            proc.stdin.close()  # type: ignore[union-attr]
            proc.wait(timeout=30)
    summary = report(results, parts, args)
    if args.chain_rounds > 0:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from _chains import measure_chains

        torch_whole = summary["torch_int4_tokens_per_s"]
        summary["chains"] = measure_chains(
            rounds=args.chain_rounds,
            max_tokens=args.max_tokens,
            threads=args.threads,
            stage_counts=[int(s) for s in args.stages.split(",")],
            torch_whole_tokens_per_s=torch_whole,
            llama_whole_tokens_per_s=summary["llamacpp_tokens_per_s"],
        )
    print(json.dumps(summary))


def _ask(proc: subprocess.Popen[str], command: str | None) -> dict[str, float]:
    if command is not None:
        proc.stdin.write(command + "\n")  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]
    line = proc.stdout.readline()  # type: ignore[union-attr]
    if not line:
        raise SystemExit(f"an engine process ended early (exit {proc.wait()})")
    return json.loads(line)


def report(
    results: dict[str, list[dict[str, float]]], parts: dict[str, float], args: argparse.Namespace
) -> dict[str, object]:
    keys = ("ttft_ms", "tokens_per_s", "tokens")
    medians = {
        engine: {key: statistics.median(r[key] for r in runs) for key in keys}
        for engine, runs in results.items()
    }
    names = {engine: engine.replace(" ", "_").replace(".", "") for engine in medians}
    base = medians["llama.cpp"]["tokens_per_s"]
    print(
        f"\n{args.runs} alternated runs each, {args.max_tokens}-token greedy chat answer, "
        f"{args.threads} threads, {os.cpu_count()} cores, each engine in its own process\n"
    )
    print(f"{'engine (whole model)':24}{'ttft ms':>10}{'decode tok/s':>15}{'vs llama.cpp':>14}{'tokens':>8}")
    for engine, m in medians.items():
        print(
            f"{engine:24}{m['ttft_ms']:>10.1f}{m['tokens_per_s']:>15.1f}"
            f"{m['tokens_per_s'] / base:>14.2f}{m['tokens']:>8.0f}"
        )
    print(
        f"\ntorch int4, per decode step: 30 blocks {parts['blocks_ms']:.2f} ms, "
        f"output head (49152 x {N_EMBD}) {parts['head_ms']:.2f} ms"
    )
    print(f"hidden state per token per hop: {N_EMBD * 4} bytes as float32 ({N_EMBD * 2} as float16)")
    print("runs (tok/s):")
    for engine, runs in results.items():
        print(f"  {engine:22}" + "  ".join(f"{r['tokens_per_s']:.1f}" for r in runs))
    return {
        "bench": "sharding",
        "runs": args.runs,
        "threads": args.threads,
        "max_tokens": args.max_tokens,
        **{f"{names[e]}_tokens_per_s": round(m["tokens_per_s"], 2) for e, m in medians.items()},
        **{f"{names[e]}_ttft_ms": round(m["ttft_ms"], 2) for e, m in medians.items()},
        "torch_int4_blocks_ms": round(parts["blocks_ms"], 3),
        "torch_int4_head_ms": round(parts["head_ms"], 3),
        "hop_bytes_per_token_f32": N_EMBD * 4,
        "hop_bytes_per_token_f16": N_EMBD * 2,
    }


if __name__ == "__main__":
    main()
