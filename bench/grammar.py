"""What constrained decoding (structured outputs) costs in decode speed.

The same chat prompt asking for a person as JSON, generated plain (no grammar), in JSON
mode (any object: OpenAI's `json_object`) and keeping to a JSON schema (`json_schema`),
greedy and sampled (temperature 1, a fixed seed), by three engines in turn:

- `dinet worker`: an engine worker process (`WorkerEngine`), what a node serves with;
  decode tok/s as the worker reports it (`EndFrame.tokens_per_s`);
- `dinet in-process`: the same loop (`Generator`) on a `Llama` in this process, no IPC;
- `llama-cpp-python`: its own grammar sampling (`create_chat_completion(grammar=...)`)
  on the same model, same threads; decode tok/s from streamed chunk times.

All runs are alternated (every engine, mode and sampling once per round), `--runs`
rounds, medians. The grammar is the very one dinet's gateway builds (`dinet.client.structured`).
Then, untimed, how many tokens per decode step dinet's sampler asks the grammar about.
Prints tables, then one JSON line.

    .venv/bin/python bench/grammar.py [--runs 5] [--threads 2] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from typing import Any

import trio
from llama_cpp import LlamaGrammar

from dinet.client.structured import json_object_grammar, json_schema_grammar
from dinet.engine import WorkerEngine, default_model_path
from dinet.engine.llama._generator import Generator
from dinet.engine.llama._llama_cpp import load_llama
from dinet.engine.sampler import Sampler
from dinet.wire.messages import ChatMessage, EndFrame, GenerationParams, TokenFrame

PROMPT = (
    "Invent a person and describe them as JSON with the fields name, age, city, "
    "occupation, email and hobbies."
)
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer"},
        "city": {"type": "string", "maxLength": 24},
        "occupation": {"type": "string", "maxLength": 32},
        "email": {"type": "string", "maxLength": 40},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 3},
    },
    "required": ["name", "age", "city", "occupation", "email", "hobbies"],
    "additionalProperties": False,
}
GRAMMARS: dict[str, str | None] = {
    "plain": None,
    "json_object": json_object_grammar(),
    "json_schema": json_schema_grammar(SCHEMA),
}
SAMPLINGS = {"greedy": 0.0, "sampled": 1.0}
SEED = 7
ENGINES = ("dinet worker", "dinet in-process", "llama-cpp-python")

Figures = tuple[float, float, int]  # (ttft ms, decode tok/s, tokens)


def params(mode: str, sampling: str, max_tokens: int) -> GenerationParams:
    return GenerationParams(
        messages=(ChatMessage(role="user", content=PROMPT),),
        max_tokens=max_tokens,
        temperature=SAMPLINGS[sampling],
        seed=SEED,
        grammar=GRAMMARS[mode],
    )


async def worker_run(engine: WorkerEngine, p: GenerationParams) -> Figures:
    start = time.perf_counter()
    first = 0.0
    tokens = 0
    async for frame in engine.generate(p):
        if isinstance(frame, TokenFrame):
            first = first or time.perf_counter()
            tokens += 1
        elif isinstance(frame, EndFrame):
            return (first - start) * 1e3, frame.tokens_per_s, tokens
        else:
            raise RuntimeError(f"the worker answered {frame!r}")
    raise RuntimeError("no EndFrame")


def generator_run(generator: Generator, p: GenerationParams) -> Figures:
    frames: list[TokenFrame] = []
    ends: list[EndFrame] = []
    stamps: list[float] = []

    def emit(frame: object) -> None:
        if isinstance(frame, TokenFrame):
            frames.append(frame)
            stamps.append(time.perf_counter())
        elif isinstance(frame, EndFrame):
            ends.append(frame)

    start = time.perf_counter()
    generator.run(p, start, emit)
    return (stamps[0] - start) * 1e3, ends[0].tokens_per_s, len(frames)


def llama_cpp_run(llm: Any, p: GenerationParams) -> Figures:
    """One streamed answer from llama-cpp-python's own sampler, from an empty KV cache
    (as in bench/overhead.py); top-k, top-p, min-p and penalties off, as dinet's are."""
    grammar = None if p.grammar is None else LlamaGrammar.from_string(p.grammar, verbose=False)
    llm.reset()
    start = time.perf_counter()
    stamps = []
    for chunk in llm.create_chat_completion(
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=p.max_tokens,
        stream=True,
        temperature=p.temperature,
        seed=p.seed,
        top_k=0 if p.temperature else 1,
        top_p=1.0,
        min_p=0.0,
        repeat_penalty=1.0,
        grammar=grammar,
    ):
        if chunk["choices"][0]["delta"].get("content"):
            stamps.append(time.perf_counter())
    decode = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
    return (stamps[0] - start) * 1e3, decode, len(stamps)


@contextlib.contextmanager
def counting_queries(counts: list[int]) -> Iterator[None]:
    """Appends to `counts`, per constrained decode step, how many token ids the sampler
    asked the grammar about (the one-token check before each accept is not counted)."""
    original = Sampler.choose_allowed

    def choose_allowed(self: Sampler, logits: Any, index: int, allowed: Any, **kw: Any) -> int:
        asked = [0]

        def counted(ids: Any) -> Any:
            asked[0] += ids.shape[0]
            return allowed(ids)

        try:
            return original(self, logits, index, counted, **kw)
        finally:
            counts.append(asked[0])

    Sampler.choose_allowed = choose_allowed  # type: ignore[method-assign]
    try:
        yield
    finally:
        Sampler.choose_allowed = original  # type: ignore[method-assign]


async def measure(args: argparse.Namespace) -> dict[tuple[str, str, str], list[Figures]]:
    path = default_model_path()
    llm = load_llama(path, threads=args.threads)
    generator = Generator(llm, "bench")
    cases = [(mode, sampling) for sampling in SAMPLINGS for mode in GRAMMARS]
    results: dict[tuple[str, str, str], list[Figures]] = {
        (engine, mode, sampling): [] for engine in ENGINES for mode, sampling in cases
    }
    async with WorkerEngine(path, threads=args.threads) as engine:
        # One warm-up each, not counted: page cache, first allocations, grammar parsing code.
        for mode, sampling in cases:
            p = params(mode, sampling, 8)
            await worker_run(engine, p)
            generator_run(generator, p)
            llama_cpp_run(llm, p)
        for round_ in range(args.runs):
            order = cases if round_ % 2 == 0 else cases[::-1]
            for mode, sampling in order:
                p = params(mode, sampling, args.max_tokens)
                results["dinet worker", mode, sampling].append(await worker_run(engine, p))
                results["dinet in-process", mode, sampling].append(generator_run(generator, p))
                results["llama-cpp-python", mode, sampling].append(llama_cpp_run(llm, p))
            print(f"round {round_ + 1}/{args.runs} done", file=sys.stderr)
    return results


def queries_per_step(args: argparse.Namespace) -> dict[tuple[str, str], tuple[float, int, int]]:
    """(mean ids asked per step, most in one step, steps) per constrained case, untimed."""
    llm = load_llama(default_model_path(), threads=args.threads)
    generator = Generator(llm, "bench")
    out = {}
    for sampling in SAMPLINGS:
        for mode in ("json_object", "json_schema"):
            counts: list[int] = []
            with counting_queries(counts):
                generator.run(params(mode, sampling, args.max_tokens), time.perf_counter(), lambda _f: None)
            out[mode, sampling] = (statistics.fmean(counts), max(counts), len(counts))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    results = trio.run(measure, args)
    queries = queries_per_step(args)
    report(results, queries, args, load_before)


def report(
    results: dict[tuple[str, str, str], list[Figures]],
    queries: dict[tuple[str, str], tuple[float, int, int]],
    args: argparse.Namespace,
    load_before: float,
) -> None:
    med = {
        key: (
            statistics.median(r[0] for r in runs),
            statistics.median(r[1] for r in runs),
            statistics.median(r[2] for r in runs),
        )
        for key, runs in results.items()
    }
    print(
        f"\n{args.runs} alternated rounds, max {args.max_tokens} tokens, {args.threads} threads, "
        f"{os.cpu_count()} cores, load average {load_before:.2f} before / {os.getloadavg()[0]:.2f} after; "
        "medians\n"
    )
    print(f"{'engine':18}{'sampling':9}{'mode':13}{'ttft ms':>9}{'tok/s':>8}{'tokens':>8}{'ratio':>8}")
    ratios: dict[str, float] = {}
    for engine in ENGINES:
        for sampling in SAMPLINGS:
            base = med[engine, "plain", sampling][1]
            for mode in GRAMMARS:
                ttft, decode, tokens = med[engine, mode, sampling]
                ratio = decode / base if base else 0.0
                if mode != "plain":
                    ratios[f"{engine}/{mode}/{sampling}"] = round(ratio, 4)
                print(
                    f"{engine:18}{sampling:9}{mode:13}{ttft:>9.1f}{decode:>8.1f}{tokens:>8.0f}"
                    f"{'' if mode == 'plain' else f'{ratio:.3f}':>8}"
                )
    print("\nratio = constrained tok/s / plain tok/s, same engine and sampling")
    print("\ntoken ids the sampler asked the grammar about per step (dinet, in-process, untimed):")
    print(f"{'mode':13}{'sampling':9}{'mean':>8}{'max':>8}{'steps':>7}")
    for (mode, sampling), (mean, most, steps) in queries.items():
        print(f"{mode:13}{sampling:9}{mean:>8.1f}{most:>8}{steps:>7}")
    print("runs (tok/s):")
    for (engine, mode, sampling), runs in results.items():
        print(f"  {engine:18}{sampling:9}{mode:13}" + " ".join(f"{d:6.1f}" for _, d, _ in runs))
    dinet = [v for k, v in ratios.items() if k.startswith("dinet worker/")]
    print(
        json.dumps(
            {
                "bench": "grammar",
                "runs": args.runs,
                "threads": args.threads,
                "max_tokens": args.max_tokens,
                "medians": {
                    "/".join(key): {"ttft_ms": round(t, 1), "tokens_per_s": round(d, 2), "tokens": n}
                    for key, (t, d, n) in med.items()
                },
                "ratios": ratios,
                "grammar_ids_per_step": {
                    f"{mode}/{sampling}": round(mean, 2) for (mode, sampling), (mean, _, _) in queries.items()
                },
                "dinet_worker_worst_ratio": min(dinet),
                "target_met": min(dinet) >= 0.90,
            }
        )
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
