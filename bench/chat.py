"""A 5-turn chat: time to first token per turn, dinet's prefix cache against llama-server's.

Three servers of the same model with the same threads, each answering the same
conversations (a ~500-token system prompt, five questions, each turn carrying the
server's own earlier answers, as a chat client sends them):

- `llama-server`, built from the llama.cpp vendored in the installed llama-cpp-python
  (`bench/_llama_server.py`), one slot, prompt cache on (its default);
- `din gateway` in front of one `din node` (`--prefix-cache-mb 256`, the default);
- the same with the cache off (`--prefix-cache-mb 0`), as dinet was before it.

Each conversation opens with a system prompt of its own (a different first line), so no
server reuses another conversation's prefix; the servers take turns, in a rotating order,
conversation by conversation. Greedy, streamed. Prints the median time to first token per
turn and server, dinet's distance from llama-server on turns 2-5, then one JSON line.

    .venv/bin/python bench/chat.py [--conversations 5] [--threads 2] [--max-tokens 48]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path

import httpx

from _llama_server import running_llama_server
from dinet.engine import default_model_path
from gateway import node_behind_gateway, sse_events

TURNS = (
    "I have a small balcony that gets morning sun. What could I grow there?",
    "Which of those would be easiest for a beginner?",
    "How often should I water it in summer?",
    "What should I do if the leaves turn yellow?",
    "Can you sum up your advice in three short points?",
)
RULES = [
    "Answer in plain language a beginner understands, without jargon.",
    "Name plants by their common names and mention the Latin name only when asked.",
    "Never recommend chemical pesticides; suggest gentle, organic remedies instead.",
    "Keep answers short: two to four sentences unless the user asks for more detail.",
    "When you are unsure, say so, and suggest asking at a local garden centre.",
    "Assume a temperate climate with cold winters unless the user says otherwise.",
    "Prefer plants that are safe for children and pets, and say when one is not.",
    "Mention watering, light and soil needs when you recommend a plant.",
    "Encourage composting and the reuse of containers where it fits the question.",
    "Do not invent facts about specific products, shops or brands.",
]


def system_prompt(conversation: int) -> str:
    """~500 tokens of rules, with a first line of its own per conversation."""
    body = " ".join(f"Rule {i + 1}: {rule}" for i, rule in enumerate(RULES * 4))
    return f"Conversation {conversation}. You are a friendly gardening assistant for city balconies. {body}"


def streamed_turn(
    client: httpx.Client, url: str, model: str, messages: list[dict[str, str]], max_tokens: int
):
    """(time to first token in ms, the answer's text) of one streamed greedy chat turn."""
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    first: float | None = None
    parts: list[str] = []
    start = time.perf_counter()
    # A new connection per turn, for every server alike: llama-server closes one after a
    # streamed answer, and httpx would try to reuse it.
    headers = {"connection": "close"}
    with client.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers) as response:
        for event in sse_events(url, response):
            content = (event.get("choices") or [{}])[0].get("delta", {}).get("content")
            if content:
                first = first or time.perf_counter()
                parts.append(content)
    if first is None:
        raise RuntimeError(f"{url} sent no text")
    return (first - start) * 1e3, "".join(parts), len(parts)


def conversation(client: httpx.Client, url: str, model: str, index: int, max_tokens: int) -> list[float]:
    """The time to first token of each turn of one conversation."""
    messages = [{"role": "system", "content": system_prompt(index)}]
    ttfts = []
    for question in TURNS:
        messages.append({"role": "user", "content": question})
        ttft, text, _ = streamed_turn(client, url, model, messages, max_tokens)
        ttfts.append(ttft)
        messages.append({"role": "assistant", "content": text})
    return ttfts


def dinet_server(root: Path, threads: int, cache_mb: int) -> AbstractContextManager[tuple[str, str]]:
    return node_behind_gateway(root, threads, ["--prefix-cache-mb", str(cache_mb)])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--conversations", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()

    names = ("llama-server", "dinet", "dinet, cache off")
    ttfts: dict[str, list[list[float]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="dinet-bench-chat-") as root_name, ExitStack() as servers:
        root = Path(root_name)
        baseline = servers.enter_context(
            running_llama_server(default_model_path(), threads=args.threads, ctx=4096, parallel=1)
        )
        targets = {
            "llama-server": (baseline, "model"),
            "dinet": servers.enter_context(dinet_server(root / "cached", args.threads, 256)),
            "dinet, cache off": servers.enter_context(dinet_server(root / "plain", args.threads, 0)),
        }
        with httpx.Client(timeout=300) as client:
            for url, model in targets.values():  # one warm-up conversation each, not counted
                conversation(client, url, model, -1, 8)
            for index in range(args.conversations):
                order = names[index % 3 :] + names[: index % 3]
                for name in order:
                    url, model = targets[name]
                    ttfts[name].append(conversation(client, url, model, index, args.max_tokens))
    report(ttfts, args)


def report(ttfts: dict[str, list[list[float]]], args: argparse.Namespace) -> None:
    medians = {
        name: [statistics.median(run[t] for run in runs) for t in range(len(TURNS))]
        for name, runs in ttfts.items()
    }
    print(
        f"\n{args.conversations} conversations of {len(TURNS)} turns per server, servers in rotating order; "
        f"~500-token system prompt, {args.max_tokens}-token greedy answers, {args.threads} threads"
    )
    print("median time to first token, ms:")
    print(f"  {'turn':>4} " + "".join(f"{name:>18}" for name in medians) + f"{'dinet - llama-server':>22}")
    for turn in range(len(TURNS)):
        row = "".join(f"{medians[name][turn]:>18.0f}" for name in medians)
        print(f"  {turn + 1:>4} {row}{medians['dinet'][turn] - medians['llama-server'][turn]:>+22.0f}")
    later = {name: statistics.median(t for run in runs for t in run[1:]) for name, runs in ttfts.items()}
    gap = later["dinet"] - later["llama-server"]
    print("  turns 2-5, all conversations: " + ", ".join(f"{n} {v:.0f}" for n, v in later.items()))
    print(f"  dinet is {gap:+.0f} ms from llama-server on turns 2-5 (target: within 20 ms)")
    result = {
        "bench": "chat",
        "conversations": args.conversations,
        "threads": args.threads,
        "ttft_ms_by_turn": {name: [round(v, 1) for v in values] for name, values in medians.items()},
        "turns_2_5_ms": {name: round(v, 1) for name, v in later.items()},
        "dinet_minus_llama_server_ms": round(gap, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
