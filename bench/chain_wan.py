"""A 3-stage chain across a WAN: plain steps against guessed tokens (prompt lookup, and
a draft model on the first stage), and llama.cpp running the whole model plainly.

In a NAT lab (tests/lab/README.md): stage A [0,10) on pub1, B [10,20) on pub2 and
C [20,30) on pub1, so two of the ring's three hops (A -> B, B -> C) cross the lab's WAN
router, which holds every packet for the one-way delay set; C -> A stays on pub1. The
client runs on pub2 (bench/_chain_wan_client.py). For each delay, every task is asked
with `draft` "none", "lookup" and "model" in turn (the order rotating each round), and
llama.cpp (llama-cpp-python, in this process, greedy) answers it whole on the same
model file; medians of decode tok/s (first token to last, as the client receives them:
the last stage sends them at most every 0.1 s), time to first token, and tokens per trip
round the ring. Every chain answer is compared token for token with the plain one:
guessed tokens must change nothing.

The model (`--target`): by default an F16 copy of the shipped SmolLM2 Q4_1, derived by
llama.cpp's own quantize API, split in three; stage A drafts with the shipped Q4_1
(`--draft-model`). The F16 copy holds exactly the Q4_1 weights, widened, so this pair
agrees far more often than a real model and its low-bit draft would (there the draft's
own quantization error, not only the engines' arithmetic, makes guesses miss): the
model draft's figures here are an upper bound. `--target q4_1` runs the shipped file.

Tasks: `copy` (repeat a paragraph: what prompt lookup is for), `edit` (a function
with a name changed: partly copied), `story` (free text: little to copy).

    .venv/bin/python bench/chain_wan.py [--delays 0,10,20] [--rounds 3] [--max-tokens 96] \
        [--target f16|q4_1] [--whole-threads 1]

Needs root (the lab). Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the repo root, for tests.lab

from tests.lab.nat import NatLab  # noqa: E402

from dinet.engine import default_model_path  # noqa: E402
from dinet.engine.llama._llama_cpp import load_llama  # noqa: E402
from dinet.engine.llama._score import widened_copy  # noqa: E402
from dinet.node.local_mesh import NodeProcess, start_node  # noqa: E402

PARAGRAPH = (
    "The lighthouse stood on a rock at the edge of the bay. Every evening the keeper climbed "
    "the one hundred and twelve steps, trimmed the wick, wound the clockwork and lit the lamp. "
    "Ships far out at sea saw its beam sweep the water every ten seconds, and knew where the "
    "reef was."
)
FUNCTION = (
    "def total_price(items, tax_rate):\n"
    "    subtotal = 0\n"
    "    for item in items:\n"
    "        subtotal += item.price * item.quantity\n"
    "    tax = subtotal * tax_rate\n"
    "    return subtotal + tax\n"
)
TASKS = {
    "copy": f"Repeat the following paragraph exactly, word for word:\n\n{PARAGRAPH}",
    "edit": f"Rename the function below to compute_total and change nothing else:\n\n{FUNCTION}",
    "story": "Write a short story about a lighthouse keeper and a storm.",
}
STAGES = [("A", "pub1", "0:10", 4001), ("B", "pub2", "10:20", 4001), ("C", "pub1", "20:30", 4002)]
DRAFTS = ("none", "lookup", "model")
Results = dict[tuple[float, str, str], list[dict[str, Any]]]  # (delay, task, way): answers


def start_stages(lab: NatLab, root: Path, model: Path) -> dict[str, NodeProcess]:
    nodes: dict[str, NodeProcess] = {}
    for name, host, layers, port in STAGES:
        bootstrap = [] if not nodes else [_addr(lab, "pub1", 4001, nodes["A"])]
        draft = ["--draft-model", str(default_model_path())] if layers.startswith("0:") else []
        nodes[name] = start_node(
            root / name,
            bootstrap=bootstrap,
            listen=f"/ip4/{lab.addr(host)}/tcp/{port}",
            command_prefix=lab.prefix(host),
            extra_args=["--model", str(model), "--layers", layers, *draft],
            start_timeout=240,
        )
    return nodes


class Whole:
    """llama.cpp on the whole model, in this process: the plain baseline."""

    def __init__(self, model: Path, threads: int) -> None:
        self._llm = load_llama(model, threads=threads, n_ctx=2048)

    def ask(self, prompt: str, max_tokens: int) -> dict[str, Any]:
        started = time.perf_counter()
        stamps: list[float] = []
        chunks = self._llm.create_chat_completion(
            [{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0.0, stream=True
        )
        for chunk in chunks:
            if chunk["choices"][0]["delta"].get("content"):
                stamps.append(time.perf_counter())
        decode_s = stamps[-1] - stamps[0] if len(stamps) > 1 else 0.0
        return {
            "ttft_s": stamps[0] - started if stamps else 0.0,
            "decode_tps": (len(stamps) - 1) / decode_s if decode_s > 0 else 0.0,
        }


def _addr(lab: NatLab, host: str, port: int, node: NodeProcess) -> str:
    return f"/ip4/{lab.addr(host)}/tcp/{port}/p2p/{node.peer_id}"


class Client:
    """bench/_chain_wan_client.py on pub2, asked one answer at a time."""

    def __init__(self, lab: NatLab, home: Path, bootstrap: str) -> None:
        argv = [sys.executable, str(REPO / "bench" / "_chain_wan_client.py"), "--home", str(home)]
        self._process = lab.popen(
            "pub2",
            [*argv, "--bootstrap", bootstrap],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        ready = self._read()
        if not ready.get("ready"):
            raise RuntimeError(f"the client did not find a chain: {ready}")

    def _read(self) -> dict[str, Any]:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError("the client ended (see its stderr above)")
        return dict(json.loads(line))

    def ask(self, prompt: str, draft: str, max_tokens: int) -> dict[str, Any]:
        assert self._process.stdin is not None
        self._process.stdin.write(
            json.dumps({"prompt": prompt, "draft": draft, "max_tokens": max_tokens}) + "\n"
        )
        self._process.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        self._process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--delays", default="0,10,20", help="one-way WAN delays, ms")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--target", choices=("f16", "q4_1"), default="f16", help="the chain's model")
    parser.add_argument("--whole-threads", type=int, default=1, help="llama.cpp's threads, whole model")
    args = parser.parse_args()
    delays = [float(d) for d in args.delays.split(",")]
    results: Results = {}
    mismatches = 0
    with tempfile.TemporaryDirectory() as tmp, NatLab() as lab:
        root = Path(tmp)
        model = default_model_path()
        if args.target == "f16":
            model = widened_copy(model, root / "models", 2, "f16")
        nodes = start_stages(lab, root, model)
        whole = Whole(model, args.whole_threads)
        client = Client(lab, root / "client", _addr(lab, "pub1", 4001, nodes["A"]))
        try:
            for delay in delays:
                lab.set_wan(delay, bypass=False)
                for round_ in range(args.rounds):
                    for task, prompt in TASKS.items():
                        turn = round_ % len(DRAFTS)
                        order = DRAFTS[turn:] + DRAFTS[:turn]
                        answers = {draft: client.ask(prompt, draft, args.max_tokens) for draft in order}
                        answers["whole"] = whole.ask(prompt, args.max_tokens)
                        mismatches += sum(answers[d]["tokens"] != answers["none"]["tokens"] for d in DRAFTS)
                        for way, answer in answers.items():
                            results.setdefault((delay, task, way), []).append(answer)
                        print(
                            f"delay {delay:g} ms, round {round_ + 1}, {task}: "
                            + ", ".join(f"{w} {a['decode_tps']:.1f} tok/s" for w, a in answers.items()),
                            file=sys.stderr,
                        )
        finally:
            client.close()
            for node in nodes.values():
                node.stop()
    rows = [_row(results, delay, task) for delay in delays for task in TASKS]
    print()
    print(
        f"3-stage chain ({args.target}), 2 of 3 hops across the WAN; medians of {args.rounds} rounds; "
        f"whole: llama.cpp, {args.whole_threads} thread(s), no WAN"
    )
    print(
        "delay  task   tokens  whole   plain  lookup  model  lookup/plain  model/plain  model/whole"
        "  per trip (l/m)"
    )
    for r in rows:
        print(
            f"{r['delay_ms']:4g}ms  {r['task']:5}  {r['tokens']:6.0f}  {r['whole_tps']:5.1f}  "
            f"{r['plain_tps']:6.1f}  {r['lookup_tps']:6.1f}  {r['model_tps']:5.1f}  "
            f"{r['lookup_speedup']:11.2f}x  {r['model_speedup']:10.2f}x  {r['model_vs_whole']:10.2f}x  "
            f"{r['lookup_per_trip']:.2f} / {r['model_per_trip']:.2f}"
        )
    print(f"chain answers that differed from the plain chain's: {mismatches}")
    summary = {"bench": "chain_wan", "target": args.target, "rounds": args.rounds, "mismatches": mismatches}
    print(json.dumps({**summary, "rows": rows}))


def _row(results: Results, delay: float, task: str) -> dict[str, Any]:
    def median(way: str, key: str) -> float:
        return statistics.median(a[key] for a in results[(delay, task, way)])

    def per_trip(way: str) -> float:
        return statistics.median(len(a["tokens"]) / a["trips"] for a in results[(delay, task, way)])

    row: dict[str, Any] = {"delay_ms": delay, "task": task}
    for way in ("whole", *DRAFTS):
        row[f"{'plain' if way == 'none' else way}_tps"] = median(way, "decode_tps")
        row[f"{'plain' if way == 'none' else way}_ttft_s"] = median(way, "ttft_s")
    row["tokens"] = statistics.median(len(a["tokens"]) for a in results[(delay, task, "none")])
    row["lookup_per_trip"], row["model_per_trip"] = per_trip("lookup"), per_trip("model")
    row["lookup_speedup"] = row["lookup_tps"] / row["plain_tps"]
    row["model_speedup"] = row["model_tps"] / row["plain_tps"]
    row["model_vs_whole"] = row["model_tps"] / row["whole_tps"]
    return row


if __name__ == "__main__":
    main()
