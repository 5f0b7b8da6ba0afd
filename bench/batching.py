"""Continuous batching: N streams at once, llama-server's N slots against one dinet node's
`--max-concurrent N`.

For each N of `--streams`, two servers of the same model with the same threads and a
2,048-token context per sequence (the node's own, fixed), started afresh for that N
(llama-server's slots are set when it starts):

- `llama-server` (`bench/_llama_server.py`), `-np N --cont-batching`, prompt cache on
  (its default);
- `din gateway` in front of one `din node --max-concurrent N` (and a per-peer concurrency
  well above N: to the node the gateway is one peer), prefix cache on (its default).

N clients start at once (a barrier), each with a prompt of its own that asks for a long
story, streamed (`stream: true`), greedy, `--max-tokens` at most. No prompt repeats,
within a batch, across rounds or across N; both servers get the same prompts. Each
prompt opens with its own number and topic, so no two share a prefix beyond the chat
template's opening (which both servers add to every prompt alike). The servers take
turns, batch by batch, the first one changing each round (ABAB, then BABA).

Tokens counted are the completion tokens of the `usage` the server sends at the end of
the stream (`stream_options: {"include_usage": true}`; both servers send it); a server
that sent none would be counted by its chunks that carry text (the JSON line says which).
Neither server can be told to ignore the end of text, so an answer may stop short of
`--max-tokens`: the table counts what was streamed, and how many streams reached it.

Per (server, N), medians over `--rounds`:
- aggregate tok/s: all streams' completion tokens / wall time from the first request
  sent to the last stream's end;
- decode tok/s: all tokens after each stream's first / time from the earliest first
  token to the last stream's end;
- TTFT: median time to first token over every stream of every round.

A batch that fails (a refusal, a stalled stream) is counted in the table and quoted in
the JSON line, and the run goes on without it. Other work on the machine skews every
figure (llama.cpp's threads wait for each other at every step): the JSON line holds the
1-minute load average at the start and the end.

Prints a table (with dinet / llama-server, and each server's N-stream rate over its own
1-stream rate), then one JSON line.

    .venv/bin/python bench/batching.py [--streams 1,2,4,8] [--rounds 3] [--max-tokens 96] [--threads 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import tempfile
import threading
import time
from contextlib import AbstractContextManager, ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from _llama_server import running_llama_server
from dinet.engine import default_model_path
from gateway import node_behind_gateway, sse_events

SERVERS = ("llama-server", "dinet")
CTX = 2048  # per sequence: the node's context (it has no flag for it), and each llama-server slot's
TOPICS = (
    "a lighthouse keeper and a storm",
    "a girl who trains a dragon",
    "two robots lost on Mars",
    "a baker who opens a shop in Paris",
    "a detective solving a train robbery",
    "a sailor crossing the Pacific alone",
    "a village that forgets its own name",
    "a mountain climber caught in an avalanche",
    "a cat that becomes mayor of a town",
    "an astronaut returning to an empty Earth",
    "a musician who loses her hearing",
    "a boy who finds a map in his attic",
)


def prompt(number: int) -> str:
    """The `number`th prompt: its own number and topic first, so none shares a prefix."""
    topic = TOPICS[number % len(TOPICS)]
    return (
        f"Story {number}: write a long, detailed story about {topic}. "
        "Give the characters names, describe every place, and tell the events in order."
    )


@dataclass(frozen=True)
class Stream:
    sent: float  # perf_counter seconds
    first: float  # when the first text arrived
    end: float  # when the stream ended
    tokens: int  # completion tokens
    counted_by: str  # "usage" or "chunks"
    finish: str | None  # "length" when it reached max_tokens


def stream(url: str, model: str, text: str, max_tokens: int, start: threading.Barrier) -> Stream:
    """One streamed greedy answer, sent once every client of the batch is ready."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    first: float | None = None
    chunks = 0
    usage: int | None = None
    finish = None
    # A new connection per answer, for both servers alike: llama-server closes one after a
    # streamed answer (as in bench/chat.py).
    with httpx.Client(timeout=600, headers={"connection": "close"}) as client:
        start.wait()
        sent = time.perf_counter()
        with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
            for event in sse_events(url, response):
                if event.get("usage"):
                    usage = event["usage"]["completion_tokens"]
                choice = (event.get("choices") or [{}])[0]
                if choice.get("delta", {}).get("content"):
                    first = first or time.perf_counter()
                    chunks += 1
                finish = choice.get("finish_reason") or finish
        end = time.perf_counter()
    if first is None:
        raise RuntimeError(f"{url} sent no text for {text!r}")
    counted_by = "chunks" if usage is None else "usage"
    return Stream(sent, first, end, chunks if usage is None else usage, counted_by, finish)


def batch(url: str, model: str, texts: list[str], max_tokens: int) -> list[Stream]:
    """All `texts` streamed at once, one client thread each."""
    start = threading.Barrier(len(texts))
    results: list[Stream | BaseException | None] = [None] * len(texts)

    def client(i: int) -> None:
        try:
            results[i] = stream(url, model, texts[i], max_tokens, start)
        except BaseException as exc:  # re-raised below, in the caller's thread
            start.abort()
            results[i] = exc

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:  # the failure itself rather than the broken barrier it left the others
        raise next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)), errors[0])
    return [r for r in results if isinstance(r, Stream)]


@dataclass(frozen=True)
class Figures:
    aggregate: float  # tok/s, first request sent to last end
    decode: float  # tok/s after each stream's first token, earliest first token to last end
    ttfts_ms: list[float]
    tokens: int
    at_limit: int  # streams that stopped at max_tokens


def figures(streams: list[Stream]) -> Figures:
    end = max(s.end for s in streams)
    tokens = sum(s.tokens for s in streams)
    after_first = sum(max(0, s.tokens - 1) for s in streams)
    return Figures(
        aggregate=tokens / (end - min(s.sent for s in streams)),
        decode=after_first / (end - min(s.first for s in streams)),
        ttfts_ms=[(s.first - s.sent) * 1e3 for s in streams],
        tokens=tokens,
        at_limit=sum(s.finish == "length" for s in streams),
    )


def dinet_server(root: Path, threads: int, slots: int) -> AbstractContextManager[tuple[str, str]]:
    # To the node the gateway is one peer: its per-peer limit is set well above N, so streams
    # of a failed batch that the node is still ending do not get the next batch refused.
    extra = ["--max-concurrent", str(slots), "--per-peer-concurrency", str(max(64, 2 * slots))]
    return node_behind_gateway(root, threads, extra)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--streams", default="1,2,4,8", help="comma-separated stream counts")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    counts = [int(n) for n in args.streams.split(",")]

    started = time.monotonic()
    numbers = itertools.count()  # every prompt of the run is a new one
    keys = [(name, n) for n in counts for name in SERVERS]
    runs: dict[Key, list[list[Stream]]] = {key: [] for key in keys}  # each round's streams
    failures: dict[Key, list[str]] = {key: [] for key in keys}
    load_before = os.getloadavg()[0]
    for n in counts:
        with tempfile.TemporaryDirectory(prefix="dinet-bench-batching-") as root_name, ExitStack() as servers:
            baseline = servers.enter_context(
                running_llama_server(default_model_path(), threads=args.threads, ctx=CTX, parallel=n)
            )
            targets = {
                "llama-server": (baseline, "model"),
                "dinet": servers.enter_context(dinet_server(Path(root_name), args.threads, n)),
            }
            for name, (url, model) in targets.items():  # warm-up: short answers, not counted
                texts = [prompt(next(numbers)) for _ in range(n)]
                attempt(failures[(name, n)], f"{name}, warm-up", url, model, texts, 8)
            for round_ in range(args.rounds):
                texts = [prompt(next(numbers)) for _ in range(n)]
                order = SERVERS if (round_ + counts.index(n)) % 2 == 0 else SERVERS[::-1]
                for name in order:
                    url, model = targets[name]
                    what = f"{name}, round {round_ + 1}"
                    streams = attempt(failures[(name, n)], what, url, model, texts, args.max_tokens)
                    if streams is not None:
                        runs[(name, n)].append(streams)
                        rate = figures(streams).aggregate
                        print(f"  {n} streams, {what}: {rate:.1f} tok/s", flush=True)
    report(runs, failures, counts, args, time.monotonic() - started, load_before)


Key = tuple[str, int]  # (server, N)


def attempt(
    failures: list[str], what: str, url: str, model: str, texts: list[str], max_tokens: int
) -> list[Stream] | None:
    """`batch(...)`, or None with its failure noted: a server that fails a batch (a
    refusal, a stalled stream) is reported as such, and the run goes on."""
    try:
        return batch(url, model, texts, max_tokens)
    except (RuntimeError, httpx.HTTPError) as exc:
        failures.append(f"{len(texts)} streams, {what}: {exc}")
        print(f"  {failures[-1]}", flush=True)
        return None


@dataclass(frozen=True)
class Row:
    """One (server, N): medians over its rounds, and what was streamed in all of them."""

    aggregate_tok_s: float
    decode_tok_s: float
    ttft_ms: float
    tokens: int
    streams: int
    streams_at_limit: int
    counted_by: str
    aggregate_by_round: list[float]  # the spread the medians hide (other work on the machine)

    @classmethod
    def of(cls, rounds: list[list[Stream]]) -> Row:
        done = [figures(streams) for streams in rounds]
        return cls(
            aggregate_tok_s=statistics.median(f.aggregate for f in done),
            decode_tok_s=statistics.median(f.decode for f in done),
            ttft_ms=statistics.median(t for f in done for t in f.ttfts_ms),
            tokens=sum(f.tokens for f in done),
            streams=sum(len(streams) for streams in rounds),
            streams_at_limit=sum(f.at_limit for f in done),
            counted_by="/".join(sorted({s.counted_by for streams in rounds for s in streams})),
            aggregate_by_round=[round(f.aggregate, 1) for f in done],
        )


def report(
    runs: dict[Key, list[list[Stream]]],
    failures: dict[Key, list[str]],
    counts: list[int],
    args: argparse.Namespace,
    took_s: float,
    load_before: float,
) -> None:
    rows = {key: Row.of(rounds) for key, rounds in runs.items() if rounds}
    versus = {
        n: rows[("dinet", n)].aggregate_tok_s / rows[("llama-server", n)].aggregate_tok_s
        for n in counts
        if ("dinet", n) in rows and ("llama-server", n) in rows
    }
    print(
        f"\n{args.rounds} rounds per stream count, servers alternated; {args.threads} threads each, "
        f"{CTX}-token context per sequence; answers of at most {args.max_tokens} tokens, greedy"
    )
    print(
        f"  {'server':<13}{'streams':>8}{'agg tok/s':>11}{'decode tok/s':>14}{'TTFT ms':>9}"
        f"{'dinet/llama':>13}{'N/1':>7}{'tokens':>8}{'at limit':>10}{'failed':>8}"
    )
    for n in counts:
        for name in SERVERS:
            failed = len(failures[(name, n)])
            row = rows.get((name, n))
            if row is None:
                print(f"  {name:<13}{n:>8}  every batch failed ({failed})")
                continue
            ratio = f"{versus[n]:.2f}" if name == "dinet" and n in versus else ""
            one = rows.get((name, 1))
            per_one = f"{row.aggregate_tok_s / one.aggregate_tok_s:.2f}" if one else ""
            print(
                f"  {name:<13}{n:>8}{row.aggregate_tok_s:>11.1f}{row.decode_tok_s:>14.1f}{row.ttft_ms:>9.0f}"
                f"{ratio:>13}{per_one:>7}{row.tokens:>8}{row.streams_at_limit:>6}/{row.streams}{failed:>8}"
            )
    print(
        "  dinet/llama: of aggregate tok/s; N/1: a server's aggregate tok/s over its own with 1 stream; "
        "tokens: completion tokens of all rounds; at limit: streams that reached --max-tokens"
    )
    print(f"  run took {took_s:.0f} s")
    result = {
        "bench": "batching",
        "rounds": args.rounds,
        "threads": args.threads,
        "max_tokens": args.max_tokens,
        "ctx_per_sequence": CTX,
        "results": {
            name: {str(n): _rounded(asdict(rows[(name, n)])) for n in counts if (name, n) in rows}
            for name in SERVERS
        },
        "failures": {f"{name} {n}": failures[(name, n)] for name, n in failures if failures[(name, n)]},
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # at start and end
        "dinet_over_llama_server": {str(n): round(v, 3) for n, v in versus.items()},
        "run_s": round(took_s),
    }
    print(json.dumps(result))


def _rounded(row: dict[str, object]) -> dict[str, object]:
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}


if __name__ == "__main__":
    main()
