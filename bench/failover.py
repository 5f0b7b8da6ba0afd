"""What a dying peer costs a user, and what more peers add.

1. Failover: 20 streamed greedy answers, each with the serving node SIGKILLed at a
   random token; the time from the kill to the next token on the client (median,
   p95), beside what starting the answer again elsewhere would cost (time to first
   token plus regenerating the lost tokens at the same speed).
2. Detection: a node frozen (SIGSTOP) while idle; the time until it leaves the client's
   view (median, max), and after SIGCONT until it is back. The liveness watch does this
   for a node whose link is cut as well; tests/client/test_failover.py and test_cutoff.py
   check only that it happens.
3. Scaling: aggregate tokens/s of 1, 2 and 3 local nodes (one llama.cpp thread each)
   under 12 concurrent requests, beside the machine's core count.

    .venv/bin/python bench/failover.py [--kills 20] [--freezes 5] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import tempfile
import time
from pathlib import Path

import trio

from dinet.client.ask import Answer, ask
from dinet.client.network import Network, open_network
from dinet.client.options import AskOptions
from dinet.config import ClientSettings
from dinet.node.local_mesh import LocalMesh, start_node
from dinet.wire.messages import ChatMessage, GenerationParams

PROMPT = "Describe a walk through an old city, street by street."


def params(max_tokens: int, text: str = PROMPT) -> GenerationParams:
    return GenerationParams(messages=(ChatMessage(role="user", content=text),), max_tokens=max_tokens)


async def wait_until_known(network: Network, peer_id: str, addr: str) -> None:
    with trio.fail_after(60):
        while True:
            manifest = network.directory.get(peer_id)
            usable = {p.peer_id for p in network.candidates(None, None)}
            if manifest is not None and addr in manifest.addrs and peer_id in usable:
                return
            await trio.sleep(0.2)


async def failover_run(mesh: LocalMesh, network: Network, max_tokens: int, rng: random.Random):
    """One answer with its serving node killed mid-way: (kill->next token s, tokens before, ttft s, tok/s).

    The next token is the first one the replacement peer sends: tokens the dead
    peer had already delivered in its last batch do not count.
    """
    kill_after = rng.randint(4, max_tokens - 8)
    attempts: list[str] = []
    killed_at = next_token_at = None
    started = time.perf_counter()
    first_at = None
    async for event in ask(network, params(max_tokens), on_attempt=attempts.append):
        if isinstance(event, Answer):
            answer = event
            continue
        now = time.perf_counter()
        first_at = first_at or now
        if killed_at is not None and next_token_at is None and len(attempts) > 1:
            next_token_at = now
        if event.index == kill_after and killed_at is None:
            victim = next(n for n in mesh.nodes if n.peer_id == attempts[-1])
            os.kill(victim.process.pid, signal.SIGKILL)
            killed_at = time.perf_counter()
    assert killed_at is not None and next_token_at is not None
    # Start the victim again (same identity, new port) before the next run.
    victim.stop()
    others = [n.addr for n in mesh.nodes if n is not victim and n.process.poll() is None]
    fresh = await trio.to_thread.run_sync(lambda: start_node(victim.home, bootstrap=others[:1]))
    mesh.nodes[mesh.nodes.index(victim)] = fresh
    await wait_until_known(network, fresh.peer_id, fresh.addr)
    return next_token_at - killed_at, kill_after + 1, first_at - started, answer.tokens_per_s


async def freeze_run(mesh: LocalMesh, network: Network, rng: random.Random) -> tuple[float, float]:
    """Freeze one idle node: (s until it left the client's view, s from thawing until it is back)."""
    victim = rng.choice(mesh.nodes)

    def in_view() -> bool:
        return victim.peer_id in {p.peer_id for p in network.candidates(None, None)}

    os.kill(victim.process.pid, signal.SIGSTOP)
    frozen_at = time.perf_counter()
    try:
        with trio.fail_after(60):
            while in_view():
                await trio.sleep(0.05)
        left_after = time.perf_counter() - frozen_at
    finally:
        os.kill(victim.process.pid, signal.SIGCONT)
    thawed_at = time.perf_counter()
    with trio.fail_after(60):
        while not in_view():
            await trio.sleep(0.05)
    return left_after, time.perf_counter() - thawed_at


async def scaling_run(root: Path, nodes: int, concurrent: int, max_tokens: int) -> float:
    with LocalMesh(root / f"scale-{nodes}", size=nodes, threads=1) as mesh:
        settings = ClientSettings(home=root / f"client-{nodes}", bootstrap=mesh.bootstrap, mdns=False)
        async with open_network(settings) as network:
            await network.discover(None, None, timeout=30, want=nodes)
            produced = 0

            async def one(i: int) -> None:
                nonlocal produced
                prompt = params(max_tokens, f"{PROMPT} ({i})")
                async for event in ask(network, prompt, AskOptions(request_timeout_s=600)):
                    if isinstance(event, Answer):
                        produced += event.usage.completion_tokens

            start = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for i in range(concurrent):
                    nursery.start_soon(one, i)
            return produced / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--freezes", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrent", type=int, default=12)
    args = parser.parse_args()
    rng = random.Random(4)
    results: dict[str, object] = {}

    with tempfile.TemporaryDirectory(prefix="dinet-failover-") as tmp:
        root = Path(tmp)

        async def bench() -> None:
            with LocalMesh(root / "chaos", size=3, threads=1) as mesh:
                settings = ClientSettings(home=root / "client", bootstrap=mesh.bootstrap, mdns=False)
                async with open_network(settings) as network:
                    await network.discover(None, None, timeout=30, want=3)
                    runs = [
                        await failover_run(mesh, network, args.max_tokens, rng) for _ in range(args.kills)
                    ]
                    freezes = [await freeze_run(mesh, network, rng) for _ in range(args.freezes)]
            gaps = sorted(r[0] for r in runs)
            restart_costs = sorted(r[2] + r[1] / r[3] for r in runs if r[3] > 0)
            results["failover"] = {
                "kills": len(runs),
                "next_token_median_s": round(statistics.median(gaps), 3),
                "next_token_p95_s": round(gaps[int(0.95 * (len(gaps) - 1))], 3),
                "tokens_before_kill_median": statistics.median(r[1] for r in runs),
                "start_over_median_s": round(statistics.median(restart_costs), 3),
            }
            if freezes:
                left, back = [r[0] for r in freezes], [r[1] for r in freezes]
                results["freeze"] = {
                    "freezes": len(freezes),
                    "out_of_view_median_s": round(statistics.median(left), 2),
                    "out_of_view_max_s": round(max(left), 2),
                    "back_in_view_median_s": round(statistics.median(back), 2),
                }
            results["scaling"] = {
                str(n): round(await scaling_run(root, n, args.concurrent, args.max_tokens), 1)
                for n in (1, 2, 3)
            }

        trio.run(bench)

    f, s = results["failover"], results["scaling"]
    print(
        f"\nfailover: {f['kills']} answers of {args.max_tokens} tokens, serving node SIGKILLed at a "
        f"random token (median {f['tokens_before_kill_median']} tokens in)"
    )
    print(
        f"  {'kill -> next token on the client':40} median {f['next_token_median_s']:.3f} s   "
        f"p95 {f['next_token_p95_s']:.3f} s"
    )
    print(
        f"  {'baseline: start the answer over':40} median {f['start_over_median_s']:.3f} s "
        "(time to first token + regenerating the lost tokens)"
    )
    if "freeze" in results:
        z = results["freeze"]
        print(f"\ndetection: {z['freezes']} idle nodes frozen (SIGSTOP), then thawed")
        print(
            f"  {'frozen -> out of the client view':40} median {z['out_of_view_median_s']:.2f} s   "
            f"max {z['out_of_view_max_s']:.2f} s"
        )
        print(f"  {'thawed -> back in view':40} median {z['back_in_view_median_s']:.2f} s")
    print(
        f"\nscaling: {args.concurrent} concurrent requests of {args.max_tokens} tokens, "
        f"1 llama.cpp thread per node, {os.cpu_count()} cores on this machine"
    )
    for n, rate in s.items():
        print(f"  {n} node(s): {rate:7.1f} tokens/s aggregate   ({rate / s['1']:.2f}x one node)")
    print(json.dumps({"bench": "failover", "cores": os.cpu_count(), **results}))


if __name__ == "__main__":
    main()
