"""What a `--no-model` node costs next to a model node, both idle.

Starts a no-model node and a model node joined through it (one llama.cpp thread), lets
them settle, then samples for `--seconds`: resident memory (the node process, plus its
engine worker for the model node) and CPU time used while idle (user + system, from
/proc, the worker included). Prints a table, then one JSON line.

    .venv/bin/python bench/no_model.py [--settle 10] [--seconds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from dinet.node.local_mesh import NodeProcess, child_pids, start_node

TICKS = os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def tree(node: NodeProcess) -> list[int]:
    return [node.process.pid, *child_pids(node.process.pid)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settle", type=float, default=10.0, help="seconds before measuring")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds of idle measured")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dinet-bench-") as tmp:
        router = start_node(Path(tmp) / "router", no_model=True)
        server = start_node(Path(tmp) / "server", bootstrap=[router.addr])
        try:
            time.sleep(args.settle)  # a benchmark's pause: joining, gossip meshes, first scrubs
            nodes = {"no-model": router, "model": server}
            before = {name: sum(cpu_s(p) for p in tree(n)) for name, n in nodes.items()}
            time.sleep(args.seconds)
            results = {
                name: {
                    "rss_mb": round(sum(rss_mb(p) for p in tree(n)), 1),
                    "node_rss_mb": round(rss_mb(n.process.pid), 1),
                    "processes": len(tree(n)),
                    "idle_cpu_pct": round(
                        100 * (sum(cpu_s(p) for p in tree(n)) - before[name]) / args.seconds, 2
                    ),
                }
                for name, n in nodes.items()
            }
        finally:
            server.stop()
            router.stop()
    print(f"{'node':<10} {'RSS MB':>8} {'node MB':>8} {'procs':>6} {'idle CPU %':>11}")
    for name, r in results.items():
        print(
            f"{name:<10} {r['rss_mb']:>8} {r['node_rss_mb']:>8} {r['processes']:>6} {r['idle_cpu_pct']:>11}"
        )
    print(json.dumps({"bench": "no_model", "seconds": args.seconds, **results}))


if __name__ == "__main__":
    main()
