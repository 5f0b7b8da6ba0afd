"""How long one routing decision takes among many candidate peers.

Ranks 1,000 simulated peers (a fake population: the decision is pure, no network)
and compares against the simplest baseline, a plain `min` by advertised speed.

    .venv/bin/python bench/routing.py [--peers 1000] [--repeat 200]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

from dinet.routing.select import PeerView, rank_peers


def population(n: int, seed: int = 7) -> list[PeerView]:
    rng = random.Random(seed)
    return [
        PeerView(
            peer_id=f"peer-{i:05d}",
            rtt_ms=rng.uniform(0.5, 300),
            tokens_per_s=rng.uniform(5, 120),
            ttft_ms=rng.uniform(10, 400),
            active=rng.randint(0, 4),
            queued=rng.randint(0, 8),
            max_concurrent=rng.randint(1, 4),
            price_per_token=rng.choice([0.0, 1e-5, 2e-5]),
            observed_tokens_per_s=rng.choice([None, rng.uniform(5, 120)]),
            observed_age_s=rng.uniform(0, 300),
            reputation=rng.choice([None, rng.random()]),
            region=rng.choice(["eu", "us", "ap"]),
        )
        for i in range(n)
    ]


def timed(fn, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    peers = population(args.peers)
    rows = {
        "baseline: min by advertised tok/s": timed(
            lambda: min(peers, key=lambda p: -p.tokens_per_s), args.repeat
        ),
        "rank_peers, best 3 (what a client uses)": timed(
            lambda: rank_peers(peers, 128, limit=3), args.repeat
        ),
        "rank_peers, full order, latency": timed(lambda: rank_peers(peers, 128), args.repeat),
        "rank_peers, full order, cost": timed(lambda: rank_peers(peers, 128, "cost"), args.repeat),
    }
    print(f"\none routing decision among {args.peers} peers, median of {args.repeat}\n")
    for name, ms in rows.items():
        print(f"  {name:42} {ms * 1000:9.1f} µs")
    print(
        json.dumps(
            {
                "bench": "routing",
                "peers": args.peers,
                **{
                    k.split(":")[0].replace(" ", "_").replace(",", ""): round(v * 1000, 1)
                    for k, v in rows.items()
                },
            }
        )
    )


if __name__ == "__main__":
    main()
