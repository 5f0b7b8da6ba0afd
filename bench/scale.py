"""What one node costs as the network grows: many real `din node` processes on loopback.

For each size N: a `--no-model` bootstrap node, `--real` nodes serving the real model and
the rest serving the FAKE engine (`--fake-engine`, model `fake-echo`: echoes, no llama.cpp,
so that a hundred nodes fit in memory), all bootstrapped to the bootstrap node only, mDNS
off, `parallel` starting at once. Then:

1. settle: until the total of established connections stops growing (at most `--settle-s`);
2. idle, `--idle-s` seconds, nobody asking: per node CPU % of one core (node + engine
   worker, /proc/PID/stat), established TCP connections and bytes/s sent + received over
   them (`ss -tinpH`, summed per socket from samples every 5 s);
3. a client bootstrapped to the LAST node started: time to first token from a new client
   (joining included) and from a warm one, for the real model and the fake one, and how
   many peers it found;
4. churn, `--churn-s` seconds: every `--churn-every-s` SIGKILL 10% of the nodes (never the
   bootstrap node nor the client's) and start as many new ones, while a client keeps
   asking, one request after another (the fake model; every `--real-every`-th request the
   real one); every request is answered or counted with its error.

Prints a table per size and, with several sizes, the ratio of each per-node figure between
the largest and the smallest; ends with one JSON line.

    .venv/bin/python bench/scale.py --sizes 10,100 [--real 3] [--idle-s 60] [--churn-s 120]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the repo root, for tests.scale

from tests.scale.swarm import Member, Swarm, TrafficMeter, connections, cpu_seconds, rss_mb, tree  # noqa: E402

import dinet  # noqa: E402
from dinet.engine.testing.fake import FAKE_MODEL_ID  # noqa: E402
from dinet.errors import DinetError  # noqa: E402
from dinet.node.service import NODE_FILE  # noqa: E402

SAMPLE_EVERY_S = 5.0
PROMPT = "Name three colours of the rainbow."
MAX_TOKENS = 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,30", help="network sizes, nodes in all (bootstrap included)")
    parser.add_argument("--real", type=int, default=3, help="nodes serving the real model")
    parser.add_argument("--idle-s", type=float, default=60.0)
    parser.add_argument("--settle-s", type=float, default=120.0, help="most seconds to wait for settling")
    parser.add_argument("--churn-s", type=float, default=120.0, help="0: no churn")
    parser.add_argument("--churn-every-s", type=float, default=30.0)
    parser.add_argument("--churn-fraction", type=float, default=0.1)
    parser.add_argument(
        "--real-every", type=int, default=4, help="under churn, every K-th request: real model"
    )
    parser.add_argument("--parallel", type=int, default=4, help="nodes starting at once")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--log", type=Path, help="the bench's clients log here (INFO)")
    parser.add_argument("--keep", type=Path, help="keep the nodes' homes and logs under this directory")
    args = parser.parse_args()
    if args.log is not None:
        logging.basicConfig(filename=args.log, level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    sizes = [int(s) for s in args.sizes.split(",")]
    if min(sizes) < args.real + 3:
        parser.error(f"each size needs at least {args.real + 3} nodes (bootstrap, --real, two fake)")

    results = []
    for size in sizes:
        if args.keep is not None:
            results.append(run_size(size, Path(tempfile.mkdtemp(prefix=f"{size}-", dir=args.keep)), args))
        else:
            with tempfile.TemporaryDirectory(prefix=f"dinet-scale-{size}-") as root:
                results.append(run_size(size, Path(root), args))
        print_size(results[-1])
    if len(results) > 1:
        print_ratios(results)
    print(json.dumps({"bench": "scale", "cores": os.cpu_count(), "sizes": results, **ratios(results)}))
    sys.stdout.flush()


def run_size(size: int, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    began = time.monotonic()
    rng = random.Random(args.seed)
    print(f"\n== {size} nodes: 1 bootstrap (--no-model), {args.real} real model, {size - 1 - args.real} fake")
    with Swarm(root, parallel=args.parallel) as swarm:
        swarm.start(fake=size - 1 - args.real, real=args.real)
        started_s = time.monotonic() - began
        print(f"   all started in {started_s:.0f} s")
        settled_s = settle(swarm, args.settle_s)
        print(f"   settled after {settled_s:.0f} s more")
        idle = measure_idle(swarm, args.idle_s)
        print(f"   idle window of {args.idle_s:g} s measured: {json.dumps(idle)}")  # kept if the rest fails
        real_id = next(m.node.model_id for m in swarm.members if m.kind == "real")
        client = measure_client(swarm, root, real_id)
        print("   client measured")
        churn = measure_churn(swarm, root, real_id, rng, args) if args.churn_s > 0 else None
    return {
        "nodes": size,
        "real": args.real,
        "start_s": round(started_s, 1),
        "settle_s": round(settled_s, 1),
        "idle": idle,
        "client": client,
        "churn": churn,
        "took_s": round(time.monotonic() - began, 1),
    }


def settle(swarm: Swarm, most_s: float) -> float:
    """Wait until the network's established connections stop growing (< 2% in 5 s)."""
    began = time.monotonic()
    pids = [m.pid for m in swarm.members]
    before = sum(connections(pids).values())
    while time.monotonic() - began < most_s:
        time.sleep(SAMPLE_EVERY_S)  # pacing: the count is sampled, no event says it settled
        now = sum(connections(pids).values())
        if now <= before * 1.02:
            break
        before = now
    return time.monotonic() - began


def measure_idle(swarm: Swarm, idle_s: float) -> dict[str, Any]:
    members = swarm.members
    meter = TrafficMeter([m.pid for m in members])
    load_before = os.getloadavg()[0]
    busy_before = machine_busy_s()
    cpu_before = {m.pid: cpu_seconds(tree(m)) for m in members}
    meter.start()
    began = time.monotonic()
    while (left := idle_s - (time.monotonic() - began)) > 0:
        time.sleep(min(SAMPLE_EVERY_S, left))  # pacing: the window is the measurement
        meter.sample()
    elapsed = time.monotonic() - began
    members = [m for m in members if m.alive]  # one that crashed meanwhile would count as idle
    cpu = {m.pid: 100.0 * (cpu_seconds(tree(m)) - cpu_before[m.pid]) / elapsed for m in members}
    rates = {m.pid: meter.bytes[m.pid] / elapsed for m in members}
    conns = {m.pid: statistics.median(meter.connection_samples[m.pid]) for m in members}
    conns_max = {m.pid: max(meter.connection_samples[m.pid]) for m in members}
    rss = {kind: [rss_mb(m.pid) for m in members if m.kind == kind] for kind in ("bootstrap", "fake", "real")}
    held = [manifests_held(m) for m in members]
    return {
        "window_s": round(elapsed, 1),
        "cpu_pct": spread(cpu.values()),
        "bytes_per_s": spread(rates.values()),
        "connections": spread(conns.values()),
        "connections_max": max(conns_max.values()),
        "nodes_cpu_pct_sum": round(sum(cpu.values()), 1),
        "machine_busy_pct": round(100.0 * (machine_busy_s() - busy_before) / elapsed, 1),
        "loadavg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "crashed": len(swarm.crashed()),  # nodes that ended by themselves so far
        "rss_mb": {kind: round(statistics.median(v), 1) for kind, v in rss.items() if v},
        "manifests_held": spread(held),  # in each node's directory (its node.json)
        "bootstrap": {
            "cpu_pct": round(cpu[swarm.bootstrap.pid], 2),
            "bytes_per_s": round(rates[swarm.bootstrap.pid]),
            "connections": conns[swarm.bootstrap.pid],
        },
    }


def manifests_held(member: Member) -> int:
    record: dict[str, Any] = json.loads((member.node.home / NODE_FILE).read_text())
    return int(record["manifests_held"])


def measure_client(swarm: Swarm, root: Path, real_id: str) -> dict[str, Any]:
    """A new client bootstrapped to the last node: time to its first token (joining
    included), peers found, then warm times to first token; for the real and fake models."""
    out: dict[str, Any] = {}
    # Not timed: this process's first client pays for imports that `din ask` would pay at
    # start, which are not the network's doing.
    try:
        with dinet.Client(bootstrap=[swarm.bootstrap.node.addr], home=root / "client-warmup", mdns=False):
            pass
    except DinetError as exc:  # the figures of the idle window are kept all the same
        print(f"   warm-up client failed: {type(exc).__name__}: {exc}")
    for name, model in (("real", real_id), ("fake", FAKE_MODEL_ID)):
        began = time.perf_counter()
        try:
            with dinet.Client(
                bootstrap=[swarm.last.node.addr], home=root / f"client-{name}", mdns=False
            ) as client:
                first, answer = first_token(client, model)
                cold = time.perf_counter() - began
                warm = [first_token(client, model)[0] for _ in range(3)]
                peers = client.peers()
                out[name] = {
                    "cold_ttft_s": round(cold, 3),
                    "first_ask_ttft_s": round(first, 3),
                    "warm_ttft_s": round(statistics.median(warm), 3),
                    "peers_found": len(peers),
                    "peers_serving": sum(any(o.model_id == model for o in p.models) for p in peers),
                    "answered_by": answer.peer_id if answer else None,
                }
        except DinetError as exc:
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def first_token(client: dinet.Client, model: str) -> tuple[float, dinet.Answer | None]:
    began = time.perf_counter()
    first = None
    stream = client.stream(PROMPT, model=model, max_tokens=MAX_TOKENS)
    for _ in stream:
        first = first or time.perf_counter() - began
    return (first if first is not None else time.perf_counter() - began), stream.answer


def measure_churn(
    swarm: Swarm, root: Path, real_id: str, rng: random.Random, args: argparse.Namespace
) -> dict[str, Any]:
    """Kill and start `churn_fraction` of the nodes every `churn_every_s` while a client asks."""
    entry = swarm.last
    per_round = max(1, round(len(swarm.members) * args.churn_fraction))
    stop = threading.Event()
    rounds: list[float] = []
    churn_errors: list[str] = []

    def churner() -> None:
        began = time.monotonic()
        while not stop.wait(args.churn_every_s):
            if time.monotonic() - began >= args.churn_s:
                break
            t = time.monotonic()
            try:
                swarm.replace(per_round, rng, keep=[entry])
            except DinetError as exc:  # a replacement that did not start; the rest go on
                churn_errors.append(str(exc))
            rounds.append(time.monotonic() - t)
        stop.set()

    answered = 0
    errors: Counter[str] = Counter()
    by_model: Counter[str] = Counter()
    failovers = 0
    thread = threading.Thread(target=churner, daemon=True)
    with dinet.Client(bootstrap=[entry.node.addr], home=root / "client-churn", mdns=False) as client:
        thread.start()
        index = 0
        while not stop.is_set():
            model = (
                real_id
                if args.real_every and index % args.real_every == args.real_every - 1
                else FAKE_MODEL_ID
            )
            index += 1
            try:
                answer = client.ask(PROMPT, model=model, max_tokens=MAX_TOKENS)
                answered += 1
                by_model[answer.model_id] += 1
                failovers += len(answer.peers_tried) > 1
            except DinetError as exc:
                errors[f"{type(exc).__name__}: {str(exc)[:160]}"] += 1
            except Exception as exc:  # noqa: BLE001 - what is not a typed error is the finding
                errors[f"UNTYPED {type(exc).__name__}: {str(exc)[:160]}"] += 1
    thread.join()
    asked = answered + sum(errors.values())
    return {
        "asked": asked,
        "answered": answered,
        "answered_pct": round(100.0 * answered / asked, 2) if asked else None,
        "by_model": dict(by_model),
        "answers_after_failover": failovers,
        "rounds": len(rounds),
        "killed_per_round": per_round,
        "round_s": spread(rounds) if rounds else None,
        "errors": dict(errors.most_common(10)),
        "churn_errors": churn_errors[:5],
        "crashed": len(swarm.crashed()),  # nodes that ended by themselves, not killed by the churn
    }


def machine_busy_s() -> float:
    """CPU-seconds the whole machine spent busy so far (every core, every process)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def spread(values: Sequence[float] | Any) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median": round(statistics.median(ordered), 2),
        "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 2),
        "max": round(ordered[-1], 2),
    }


# -- report -------------------------------------------------------------------------------


def print_size(result: dict[str, Any]) -> None:
    idle = result["idle"]
    nodes, took = result["nodes"], result["took_s"]
    print(f"\n{nodes} nodes ({result['real']} real), idle {idle['window_s']:g} s, took {took:.0f} s")
    print(f"{'per node':26}{'median':>10}{'p95':>10}{'max':>10}")
    for label, key in (("CPU % of one core", "cpu_pct"), ("bytes/s sent+received", "bytes_per_s"),
                       ("established connections", "connections")):  # fmt: skip
        figures = idle[key]
        print(f"{label:26}{figures['median']:>10.2f}{figures['p95']:>10.2f}{figures['max']:>10.2f}")
    print(
        f"all nodes together {idle['nodes_cpu_pct_sum']:.0f}% of one core; machine busy "
        f"{idle['machine_busy_pct']:.0f}% (of {100 * (os.cpu_count() or 1)}%), load {idle['loadavg_1m']}; "
        f"RSS MB {idle['rss_mb']}; {idle['crashed']} nodes crashed by then"
    )
    held = idle["manifests_held"]
    print(f"manifests held per node: median {held['median']:g}, max {held['max']:g} (of {nodes} nodes)")
    for name, client in result["client"].items():
        if "error" in client:
            print(f"client ({name} model): {client['error']}")
            continue
        print(
            f"client ({name} model): first token {client['cold_ttft_s']:.2f} s from a new client "
            f"({client['first_ask_ttft_s']:.2f} s of it asking), warm {client['warm_ttft_s']:.2f} s; "
            f"{client['peers_found']} peers found, {client['peers_serving']} serving it"
        )
    churn = result["churn"]
    if churn is not None:
        print(
            f"churn: {churn['rounds']} rounds of {churn['killed_per_round']} killed + started; "
            f"{churn['answered']}/{churn['asked']} answered ({churn['answered_pct']}%), "
            f"{churn['answers_after_failover']} after failover; {churn['crashed']} nodes crashed in all"
        )
        for error, count in churn["errors"].items():
            print(f"   {count} x {error}")


def ratios(results: list[dict[str, Any]]) -> dict[str, Any]:
    if len(results) < 2:
        return {}
    small, large = results[0]["idle"], results[-1]["idle"]
    return {
        "ratio_of": [results[0]["nodes"], results[-1]["nodes"]],
        "ratios": {
            key: round(large[key]["median"] / small[key]["median"], 2) if small[key]["median"] else None
            for key in ("cpu_pct", "bytes_per_s", "connections")
        },
    }


def print_ratios(results: list[dict[str, Any]]) -> None:
    figures = ratios(results)
    low, high = figures["ratio_of"]
    print(f"\nper-node medians, {high} nodes / {low} nodes (flat: within 1.5x)")
    for key, ratio in figures["ratios"].items():
        print(f"  {key:14}{ratio}")


if __name__ == "__main__":
    main()
