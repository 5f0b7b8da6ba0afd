"""Pipeline sharding over loopback: decode speed of chains of stage processes.

Configurations, each its own `din node` processes on loopback, asked in alternated
rounds for the same greedy answer:

- llama.cpp whole: one ordinary node (`/dinet/infer/1`);
- 1-, 2- and 3-stage chains of torch stages (`--layers`, `/dinet/shard/1`) driven by
  the client, one stream per stage.

Reports median decode tokens/s (as the client sees tokens arrive), the bytes one
decode step moves over each hop (step sent + hidden state back, f32), and the
per-hop overhead: (time per token of the k-stage chain - that of the 1-stage chain)
/ (k - 1). The compute is the same 30 blocks in every chain, so the difference is
what each extra hop costs. Last line: JSON.

    .venv/bin/python bench/sharding.py [--rounds 5] [--max-tokens 96] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _chains import (  # noqa: E402
    bytes_per_token_per_hop,
    connect,
    median,
    run_once,
    start_configs,
)
from dinet.client.network import open_network  # noqa: E402
from dinet.config import ClientSettings  # noqa: E402

PROMPT = "Describe a walk through an old city, street by street."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2, help="threads per node process")
    parser.add_argument("--stages", default="1,2,3", help="chain lengths to measure")
    args = parser.parse_args()
    stage_counts = [int(s) for s in args.stages.split(",")]

    with tempfile.TemporaryDirectory(prefix="dinet-bench-sharding-") as tmp:
        root = Path(tmp)
        configs = start_configs(root, stage_counts, args.threads)
        try:
            async def run() -> None:
                settings = ClientSettings(home=root / "client", mdns=False)
                async with open_network(settings) as network:
                    await connect(network, configs)
                    for config in configs:  # warm-up: first answers load caches and JIT paths
                        await run_once(network, config, PROMPT, 8)
                    for config in configs:
                        config.speeds.clear()
                        config.texts.clear()
                    for _ in range(args.rounds):
                        for config in configs:
                            await run_once(network, config, PROMPT, args.max_tokens)

            trio.run(run)
        finally:
            for config in configs:
                for node in config.nodes:
                    node.stop()

    whole = configs[0]
    one = next((c for c in configs if c.hops == 1), None)
    hop_bytes = bytes_per_token_per_hop()
    rows = []
    print(f"{'configuration':<28} {'tok/s':>8} {'x llama':>8} {'bytes/tok/hop':>14} {'ms/hop':>8}")
    for config in configs:
        speed = median(config.speeds)
        ratio = speed / median(whole.speeds) if median(whole.speeds) else 0.0
        per_hop_ms = None
        if one is not None and config.hops > 1 and speed and median(one.speeds):
            per_hop_ms = (1000 / speed - 1000 / median(one.speeds)) / (config.hops - 1)
        rows.append({"name": config.name, "stages": config.hops, "tokens_per_s": round(speed, 1),
                     "vs_llama_cpp": round(ratio, 3), "per_hop_ms": None if per_hop_ms is None else
                     round(per_hop_ms, 3), "runs": [round(s, 1) for s in config.speeds],
                     "same_text": len(config.texts) == 1})
        hop = "-" if per_hop_ms is None else f"{per_hop_ms:.2f}"
        size = hop_bytes if config.hops else "-"
        print(f"{config.name:<28} {speed:>8.1f} {ratio:>8.2f} {size:>14} {hop:>8}")
    texts = {c.name: next(iter(c.texts)) for c in configs if len(c.texts) == 1}
    chains_agree = len({t for n, t in texts.items() if n != whole.name}) <= 1
    print(f"chains give one text: {chains_agree}; {args.rounds} alternated rounds, "
          f"{args.max_tokens} tokens, {args.threads} threads per process")
    print(json.dumps({"bench": "sharding", "rounds": args.rounds, "max_tokens": args.max_tokens,
                      "threads": args.threads, "bytes_per_token_per_hop": hop_bytes,
                      "chains_agree": chains_agree, "configs": rows}))


if __name__ == "__main__":
    main()
