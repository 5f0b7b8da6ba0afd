"""A 3-stage chain across a WAN: plain steps against guessed tokens (prompt lookup).

In a NAT lab (tests/lab/README.md): stage A [0,10) on pub1, B [10,20) on pub2 and
C [20,30) on pub1, so two of the ring's three hops (A -> B, B -> C) cross the lab's WAN
router, which holds every packet for the one-way delay set; C -> A stays on pub1. The
client runs on pub2 (bench/_chain_wan_client.py). For each delay, every task is asked
with `draft` "none" and "lookup" in alternation, rounds in a row; medians of decode
tok/s (first token to last, as the client receives them: the last stage sends them at
most every 0.1 s), time to first token, and tokens per trip round the ring. Every pair
of answers is compared token for token: guessed tokens must change nothing.

Tasks: `copy` (repeat a paragraph: what prompt lookup is for), `edit` (a function
with a name changed: partly copied), `story` (free text: little to copy).

    .venv/bin/python bench/chain_wan.py [--delays 0,10,20] [--rounds 3] [--max-tokens 96]

Needs root (the lab). Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the repo root, for tests.lab

from tests.lab.nat import NatLab  # noqa: E402

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
DRAFTS = ("none", "lookup")


def start_stages(lab: NatLab, root: Path) -> dict[str, NodeProcess]:
    nodes: dict[str, NodeProcess] = {}
    for name, host, layers, port in STAGES:
        bootstrap = [] if not nodes else [_addr(lab, "pub1", 4001, nodes["A"])]
        nodes[name] = start_node(
            root / name,
            bootstrap=bootstrap,
            listen=f"/ip4/{lab.addr(host)}/tcp/{port}",
            command_prefix=lab.prefix(host),
            extra_args=["--layers", layers],
            start_timeout=240,
        )
    return nodes


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
    args = parser.parse_args()
    delays = [float(d) for d in args.delays.split(",")]
    results: dict[tuple[float, str, str], list[dict[str, Any]]] = {}
    mismatches = 0
    with tempfile.TemporaryDirectory() as tmp, NatLab() as lab:
        root = Path(tmp)
        nodes = start_stages(lab, root)
        client = Client(lab, root / "client", _addr(lab, "pub1", 4001, nodes["A"]))
        try:
            for delay in delays:
                lab.set_wan(delay, bypass=False)
                for round_ in range(args.rounds):
                    for task, prompt in TASKS.items():
                        order = DRAFTS if round_ % 2 == 0 else DRAFTS[::-1]
                        answers = {draft: client.ask(prompt, draft, args.max_tokens) for draft in order}
                        if answers["none"]["tokens"] != answers["lookup"]["tokens"]:
                            mismatches += 1
                        for draft, answer in answers.items():
                            results.setdefault((delay, task, draft), []).append(answer)
                        print(
                            f"delay {delay:g} ms, round {round_ + 1}, {task}: "
                            + ", ".join(f"{d} {answers[d]['decode_tps']:.1f} tok/s" for d in DRAFTS),
                            file=sys.stderr,
                        )
        finally:
            client.close()
            for node in nodes.values():
                node.stop()
    rows = []
    for delay in delays:
        for task in TASKS:
            plain, guessed = results[(delay, task, "none")], results[(delay, task, "lookup")]
            row = {
                "delay_ms": delay,
                "task": task,
                "plain_tps": statistics.median(a["decode_tps"] for a in plain),
                "lookup_tps": statistics.median(a["decode_tps"] for a in guessed),
                "plain_ttft_s": statistics.median(a["ttft_s"] for a in plain),
                "lookup_ttft_s": statistics.median(a["ttft_s"] for a in guessed),
                "tokens_per_trip": statistics.median(len(a["tokens"]) / a["trips"] for a in guessed),
                "tokens": statistics.median(len(a["tokens"]) for a in guessed),
            }
            row["speedup"] = row["lookup_tps"] / row["plain_tps"]
            rows.append(row)
    print()
    print(f"3-stage chain, 2 of 3 hops across the WAN; medians of {args.rounds} alternated rounds")
    print("delay  task   tokens  plain tok/s  lookup tok/s  speedup  tokens/trip  ttft plain/lookup")
    for r in rows:
        print(
            f"{r['delay_ms']:4g}ms  {r['task']:5}  {r['tokens']:6.0f}  {r['plain_tps']:11.1f}  "
            f"{r['lookup_tps']:12.1f}  {r['speedup']:6.2f}x  {r['tokens_per_trip']:11.2f}  "
            f"{r['plain_ttft_s']:.2f} / {r['lookup_ttft_s']:.2f} s"
        )
    print(f"answers that differed between plain and lookup: {mismatches}")
    print(json.dumps({"bench": "chain_wan", "rounds": args.rounds, "mismatches": mismatches, "rows": rows}))


if __name__ == "__main__":
    main()
