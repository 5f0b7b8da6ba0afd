"""Reach across NAT in the NAT lab (tests/lab/): hole punching, paths to a model, relay cost.

The world: pub1 serves the default model (a plain public node; it relays for nobody, so
that every circuit crosses pub2), pub2 serves no model and relays (no byte or time limit
per circuit, so a whole model can be pulled through it), a1 in home A serves the default
model, b1 in home B serves `variant` (the default model's weights under another name: the
same answers, another hash, held by no one else). Every model node uses one thread. The
clients run on a2 in home A and know only pub2's address.

1. Hole punching: ATTEMPTS fresh client processes (new identity each), each asking b1
   once (its first connection to b1 goes through pub2) and watching the link; a success
   is a direct link within PUNCH_WITHIN_S of the ask call.
2. Paths to a model, from the call of the client's `ask()` (a network already joined, the
   connection already open: what a user's second question costs) to the first token, and
   decode tok/s of a MAX_TOKENS greedy answer: direct LAN (a2 -> a1), relay only (a2 ->
   pub2 -> b1, a client with hole punching off), the punched path (a2 -> b1 once the link
   is direct) and a plain public connection (a2 -> pub1); with the WAN forwarding at
   kernel speed and with DELAY_MS one way (a round trip of 2 * DELAY_MS). Configurations
   alternate within each round, the delays between rounds.
3. `din model pull` of b1's model into a fresh home on a2: with hole punching (the pull
   waits for the direct link) and without it at the puller (it pulls through pub2). MB/s of
   the transfer (first to last chunk, from the pull's progress lines), the pull's own
   seconds, and the share of the model's bytes that crossed the WAN between the two homes.
4. Relay cost: pub2's CPU seconds (/proc/PID/stat) during each answer and pull, and bytes
   per relayed answer from its reach counters (node.json: relayed_bytes) and from the lab's
   WAN counters (both legs: home A <-> pub2, pub2 <-> home B).

Prints tables, then one JSON line. Needs root (network namespaces).

    .venv/bin/python bench/reach.py [--attempts 20] [--rounds 7] [--pull-rounds 1] [--delay-ms 20]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the repo root, for tests.lab and tests.reach

from tests.lab import probe  # noqa: E402
from tests.lab.nat import NatLab  # noqa: E402
from tests.reach.test_nat import node_file, relays_of, until, variant_model  # noqa: E402

from dinet.node.local_mesh import NodeProcess, start_node  # noqa: E402

PORT = 4001
PROMPT = "Write a long, detailed story about a lighthouse keeper and a storm."
PUNCH_WITHIN_S = 15.0
CLIENT = str(REPO / "bench" / "_reach_client.py")
NODE_FILE_SETTLE_S = 1.5  # a node rewrites node.json within a second of a change
PATHS = ("direct LAN", "relay only", "punched", "plain public")
PATH_HOPS = {
    "direct LAN": "a2 -> a1, same home",
    "relay only": "a2 -> pub2 -> b1",
    "punched": "a2 -> b1, two NATs",
    "plain public": "a2 -> pub1",
}
PULLS = ("direct", "relayed")
PULL_NOTES = re.compile(r"hole punch|through a relay|dropping")  # in a pull's log (-v)
FIRST_TOKENS = 3  # first tokens timed per path and round: the 96-token answer's and 2 more


@dataclass
class World:
    lab: NatLab
    root: Path
    nodes: dict[str, NodeProcess] = field(default_factory=dict)

    def node(self, host: str, bootstrap: list[str], *extra: str) -> NodeProcess:
        """`din node` on `host`: on its own address if public, else on every address it has."""
        node = start_node(
            self.root / host,
            bootstrap=bootstrap,
            listen=f"/ip4/{self.lab.addr(host) if host.startswith('pub') else '0.0.0.0'}/tcp/{PORT}",
            command_prefix=self.lab.prefix(host),
            extra_args=list(extra),
        )
        self.nodes[host] = node
        return node

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()


class Client(probe.LineDriven):
    """bench/_reach_client.py on a lab host."""

    def __init__(self, world: World, name: str, host: str, bootstrap: str, *flags: str) -> None:
        argv = [sys.executable, CLIENT, str(world.root / name), bootstrap, *flags]
        started = time.perf_counter()
        super().__init__(
            world.lab.popen(host, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
        )
        self.ready = self.reply(90)
        self.start_s = time.perf_counter() - started

    def command(self, line: str, timeout: float = 180) -> dict[str, Any]:
        reply = super().command(line, timeout)
        if "error" in reply:
            raise RuntimeError(f"client: {reply['error']}")
        return reply


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of process `pid` so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Relay:
    """pub2, watched: its CPU and its reach counters."""

    def __init__(self, node: NodeProcess) -> None:
        self.node = node
        self.pid = int(node_file(node)["pid"])  # `ip netns exec` execs: the node itself
        self.last_activity = time.monotonic()

    def cpu(self) -> float:
        return cpu_s(self.pid)

    def counters(self) -> dict[str, int]:
        """Its reach counters once node.json shows everything up to the last activity."""
        wait = self.last_activity + NODE_FILE_SETTLE_S - time.monotonic()
        if wait > 0:
            time.sleep(wait)  # node.json is rewritten on a 1 s clock: nothing to poll for
        reach: dict[str, int] = node_file(self.node)["reach"]
        return reach


@dataclass
class Measure:
    """What one activity cost: wall seconds, relay CPU seconds, WAN bytes by pair."""

    wall_s: float
    relay_cpu_s: float
    wan: dict[str, int]


def measured(lab: NatLab, relay: Relay, work: Callable[[], Any]) -> tuple[Any, Measure]:
    before_wan, before_cpu, started = lab.wan_counters(), relay.cpu(), time.perf_counter()
    result = work()
    wall, cpu, after_wan = time.perf_counter() - started, relay.cpu() - before_cpu, lab.wan_counters()
    relay.last_activity = time.monotonic()
    wan = {k: after_wan[k] - before_wan.get(k, 0) for k in after_wan if k.startswith("pair_")}
    return result, Measure(wall, cpu, wan)


def legs(wan: dict[str, int]) -> dict[str, int]:
    """WAN bytes: between the homes (direct), and on the two legs through the relay."""
    return {
        "homes": wan.get("pair_ha_hb", 0),
        "relay_legs": wan.get("pair_ha_pub2", 0) + wan.get("pair_hb_pub2", 0),
        "pub1": wan.get("pair_ha_pub1", 0),
    }


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def reserved_only_on(node: NodeProcess, relay: NodeProcess) -> bool:
    return relays_of(node) == {relay.peer_id}


def build(lab: NatLab, root: Path) -> World:
    world = World(lab, root)
    variant = variant_model(root / "smollm2-relayed.gguf")
    pub1 = world.node("pub1", [], "--no-relay")  # the default model
    relay_flags = ("--no-model", "--relay-circuit-bytes", "0", "--relay-circuit-s", "0")
    pub2 = world.node("pub2", [pub1.addr], *relay_flags)
    world.node("b1", [pub2.addr], "--model", str(variant), "--relays", "1")
    world.node("a1", [pub2.addr], "--relays", "1")  # the default model
    for host in ("a1", "b1"):
        node = world.nodes[host]
        until(partial(reserved_only_on, node, pub2), 120, f"{host}'s reservation on pub2")
    return world


def punch_attempts(world: World, relay: Relay, attempts: int, bootstrap: str) -> list[dict[str, Any]]:
    """Fresh clients on a2, each asking b1 once and watching its link."""
    b1 = world.nodes["b1"]
    runs = []
    for i in range(attempts):
        client = Client(world, f"fresh-{i}", "a2", bootstrap)
        try:
            line = f"punch {b1.peer_id} {b1.model_hash} 8 {PUNCH_WITHIN_S} {PROMPT}"
            reply, cost = measured(world.lab, relay, partial(client.command, line))
            counters = punch_counters(client, settled=reply["direct_s"] is not None)
        finally:
            client.close()
        ok = reply["direct_s"] is not None and reply["direct_s"] <= PUNCH_WITHIN_S
        runs.append(
            {
                "ok": ok,
                "direct_s": reply["direct_s"],
                "relayed_s": reply["relayed_s"],
                "first_ttft_ms": reply["ttft_ms"],
                "link_first": reply["link_first"],
                "client_start_s": client.start_s,
                "punch_attempts": counters.get("punch_attempts", 0),
                "punch_successes": counters.get("punch_successes", 0),
                "homes_bytes": legs(cost.wan)["homes"],
            }
        )
        state = f"direct after {reply['direct_s']:.2f} s" if ok else "NOT direct"
        print(f"  attempt {i + 1:2}/{attempts}: {state}, first token {reply['ttft_ms']:.0f} ms", flush=True)
    return runs


def punch_counters(client: Client, *, settled: bool) -> dict[str, int]:
    """The client's reach counters, once its punch has returned if the link went direct
    (the punch notices the direct connection a moment after the connection exists)."""
    deadline = time.monotonic() + 5.0
    while True:
        counters = client.command("counters")
        if not settled or counters.get("punch_successes", 0) or time.monotonic() > deadline:
            return counters
        time.sleep(0.1)


def start_clients(world: World, bootstrap: str) -> dict[str, Client]:
    """The long-lived clients on a2, warmed up: one that punches (its link to b1 direct
    before this returns), one that does not."""
    b1 = world.nodes["b1"]
    clients = {
        "punching": Client(world, "punching", "a2", bootstrap),
        "relay": Client(world, "relay-only", "a2", bootstrap, "--no-hole-punching"),
    }
    for host in ("a1", "b1", "pub1"):  # connections open, caches filled
        n = world.nodes[host]
        clients["punching"].command(f"ask {n.peer_id} {n.model_hash} 8 {PROMPT}")
    clients["relay"].command(f"ask {b1.peer_id} {b1.model_hash} 8 {PROMPT}")
    if clients["punching"].command(f"direct {b1.peer_id} 30")["link"] != "direct":
        raise RuntimeError("the long-lived client's link to b1 was not punched within 30 s")
    return clients


def ask_paths(
    world: World, relay: Relay, clients: dict[str, Client], rounds: int, delays: list[float], max_tokens: int
) -> dict[float, dict[str, list[dict[str, Any]]]]:
    """Alternated rounds: every path at every delay; each answer with its relay cost."""
    targets = {"direct LAN": "a1", "relay only": "b1", "punched": "b1", "plain public": "pub1"}
    results: dict[float, dict[str, list[dict[str, Any]]]] = {d: {p: [] for p in PATHS} for d in delays}
    for r in range(rounds):
        order = delays if r % 2 == 0 else delays[::-1]
        for delay in order:
            world.lab.set_wan(delay)
            paths = PATHS[r % len(PATHS) :] + PATHS[: r % len(PATHS)]
            for path in paths:
                node = world.nodes[targets[path]]
                client = clients["relay" if path == "relay only" else "punching"]
                line = f"ask {node.peer_id} {node.model_hash} {max_tokens} {PROMPT}"
                before = relay.counters() if path == "relay only" else None
                reply, cost = measured(world.lab, relay, partial(client.command, line))
                if before is not None:
                    after = relay.counters()
                    reply["relay_counted_bytes"] = after["relayed_bytes"] - before["relayed_bytes"]
                reply.update(wall_s=cost.wall_s, relay_cpu_s=cost.relay_cpu_s, **legs(cost.wan))
                reply["first_tokens_ms"] = [reply["ttft_ms"]] + [
                    client.command(f"ask {node.peer_id} {node.model_hash} 1 {PROMPT}")["ttft_ms"]
                    for _ in range(FIRST_TOKENS - 1)
                ]
                results[delay][path].append(reply)
        print(f"  round {r + 1}/{rounds} done", flush=True)
    return results


def pull_once(world: World, relay: Relay, name: str, punching: bool, bootstrap: str) -> dict[str, Any]:
    """`din model pull` of b1's model on a2 into a fresh home; its timings and its path."""
    b1 = world.nodes["b1"]
    home = world.root / name
    argv = [sys.executable, "-m", "dinet", "model", "pull", str(b1.model_hash), "--json", "--no-mdns", "-v"]
    argv += ["--home", str(home), "--bootstrap", bootstrap, "--timeout", "60"]
    if not punching:
        argv.append("--no-hole-punching")
    progress: list[tuple[float, int]] = []
    log: list[str] = []  # its other lines on stderr: what it says of punches and relays

    def run() -> dict[str, Any]:
        process = world.lab.popen(
            "a2", argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO
        )

        def read_stderr() -> None:
            assert process.stderr is not None
            for line in process.stderr:
                if line.startswith('{"event": "progress"'):
                    progress.append((time.perf_counter(), json.loads(line)["done_bytes"]))
                else:
                    log.append(line.rstrip())

        reader = threading.Thread(target=read_stderr, daemon=True)
        reader.start()
        assert process.stdout is not None
        out = process.stdout.read()
        process.wait(60)
        reader.join(10)
        if process.returncode != 0:
            raise RuntimeError(f"pull failed ({process.returncode}): " + "\n".join(log[-30:]))
        report: dict[str, Any] = json.loads(out)
        return report

    try:
        report, cost = measured(world.lab, relay, run)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    size = report["fetched_bytes"]
    transfer_s = progress[-1][0] - progress[0][0] if len(progress) > 1 else float("nan")
    wan = legs(cost.wan)
    return {
        "mb_s": size / 1e6 / transfer_s,
        "pull_s": report["seconds"],
        "wall_s": cost.wall_s,
        "bytes": size,
        "homes_share": wan["homes"] / size,
        "relay_share": wan["relay_legs"] / 2 / size,  # each byte crosses both legs
        "relay_cpu_s": cost.relay_cpu_s,
        "notes": [line.split(" INFO ", 1)[-1] for line in log if PULL_NOTES.search(line)],
    }


def pulls(
    world: World, relay: Relay, rounds: int, delays: list[float], bootstrap: str
) -> dict[float, dict[str, list[dict[str, Any]]]]:
    results: dict[float, dict[str, list[dict[str, Any]]]] = {d: {k: [] for k in PULLS} for d in delays}
    count = 0
    for r in range(rounds):
        order = delays if r % 2 == 0 else delays[::-1]
        for delay in order:
            world.lab.set_wan(delay)
            kinds = PULLS if (r + order.index(delay)) % 2 == 0 else PULLS[::-1]
            for kind in kinds:
                count += 1
                run = pull_once(world, relay, f"pull-{count}", kind == "direct", bootstrap)
                results[delay][kind].append(run)
                print(
                    f"  pull {kind:8} at {delay:g} ms: {run['mb_s']:.1f} MB/s, "
                    f"{run['homes_share']:.0%} between the homes; " + ("; ".join(run["notes"]) or "-"),
                    flush=True,
                )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attempts", type=int, default=20, help="fresh clients trying to punch")
    parser.add_argument("--rounds", type=int, default=7, help="alternated rounds of answers on each path")
    parser.add_argument("--pull-rounds", type=int, default=1, help="rounds of pulls (4 pulls each)")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="one-way WAN delay of the slow runs")
    parser.add_argument("--max-tokens", type=int, default=96)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/reach.py builds network namespaces: run it as root")
    delays = [0.0, args.delay_ms]
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dinet-bench-reach-") as tmp, NatLab() as lab:
        root = Path(tmp)
        world = build(lab, root)
        clients: dict[str, Client] = {}
        try:
            pub2 = world.nodes["pub2"]
            relay = Relay(pub2)
            print(
                f"lab ready in {time.perf_counter() - began:.0f} s; {args.attempts} hole-punch attempts",
                flush=True,
            )
            punches = punch_attempts(world, relay, args.attempts, pub2.addr)

            answers: dict[float, dict[str, list[dict[str, Any]]]] = {
                d: {p: [] for p in PATHS} for d in delays
            }
            if args.rounds:
                clients.update(start_clients(world, pub2.addr))
                print(f"{args.rounds} rounds of answers on {len(PATHS)} paths at {delays} ms", flush=True)
                answers = ask_paths(world, relay, clients, args.rounds, delays, args.max_tokens)
            print(f"{args.pull_rounds} rounds of pulls", flush=True)
            pulled = pulls(world, relay, args.pull_rounds, delays, pub2.addr)
            relay_end = relay.counters()
        finally:
            for client in clients.values():
                client.close()
            world.stop()
    summary = report(args, punches, answers, pulled, relay_end, time.perf_counter() - began)
    print(json.dumps(summary))


def report(
    args: argparse.Namespace,
    punches: list[dict[str, Any]],
    answers: dict[float, dict[str, list[dict[str, Any]]]],
    pulled: dict[float, dict[str, list[dict[str, Any]]]],
    relay_end: dict[str, int],
    took_s: float,
) -> dict[str, Any]:
    print(f"\nNAT lab, {os.cpu_count()} cores shared with other work; {took_s / 60:.1f} min in all")
    summary: dict[str, Any] = {"bench": "reach", "cores": os.cpu_count(), "minutes": round(took_s / 60, 1)}
    summary["punching"] = report_punches(punches)
    summary["paths"] = report_paths(args, answers) if args.rounds else {}
    summary["pulls"] = report_pulls(args, pulled, answers) if args.pull_rounds else {}
    circuits = relay_end.get("circuits_relayed", 0)
    relayed = relay_end.get("relayed_bytes", 0)
    print(
        f"\n4. Relay pub2 over the whole run: {circuits} circuits, {relayed / 1e6:.1f} MB relayed "
        f"({relayed / max(circuits, 1) / 1e6:.2f} MB per circuit, pulls included)"
    )
    summary["relay"] = {"circuits": circuits, "relayed_bytes": relayed}
    return summary


def report_punches(punches: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [p for p in punches if p["ok"]]
    to_direct = median([p["direct_s"] for p in ok])
    after_relayed = median([p["direct_s"] - p["relayed_s"] for p in ok if p["relayed_s"] is not None])
    first = median([p["first_ttft_ms"] for p in punches])
    start = median([p["client_start_s"] for p in punches])
    print(
        f"\n1. Hole punching: {len(punches)} fresh client processes on a2 (home A), each asking b1 "
        f"(home B) once; the first connection goes through pub2; WAN at kernel speed"
    )
    share = len(ok) / max(len(punches), 1)
    print(f"   direct within {PUNCH_WITHIN_S:g} s: {len(ok)}/{len(punches)} ({share:.0%}; done-when: >= 90%)")
    if ok:
        print(
            f"   medians: direct {to_direct:.2f} s after the ask call, {after_relayed:.2f} s after the "
            f"relayed link opened; first token of a fresh client (relayed, circuit dial included) "
            f"{first:.0f} ms; client start {start:.1f} s"
        )
    return {
        "attempts": len(punches),
        "successes": len(ok),
        "within_s": PUNCH_WITHIN_S,
        "to_direct_s": _round(to_direct, 3),
        "after_relayed_s": _round(after_relayed, 3),
        "fresh_first_token_ms": _round(first, 1),
        "client_punch_attempts": sum(p["punch_attempts"] for p in punches),
        "client_punch_successes": sum(p["punch_successes"] for p in punches),
        "direct_s": [_round(p["direct_s"], 2) for p in punches],
    }


def report_paths(
    args: argparse.Namespace, answers: dict[float, dict[str, list[dict[str, Any]]]]
) -> dict[str, Any]:
    slow = args.delay_ms
    texts = {a["text"] for by_path in answers.values() for runs in by_path.values() for a in runs}
    print(
        f"\n2. Paths to a model from a2: {args.max_tokens}-token greedy answers (one per path, delay and "
        f"round; {args.rounds} rounds, paths and delays alternated), medians. ttft: from the client's "
        f"ask() call (network joined, connection open) to the first token, {FIRST_TOKENS} per path and "
        f"round (IQR: its quartiles); +RTT: its growth from 0 to {slow:g} ms in round trips of "
        f"{2 * slow:g} ms. Relay: pub2's "
        f"CPU per answer above its idle rate, the bytes it relayed (its own count) and the WAN bytes "
        f"through it above a same-round LAN answer's"
    )
    print(
        f"{'path':<13}{'hops':<21}{'WAN':>5}{'ttft ms':>9}{'IQR':>10}{'+RTT':>6}{'tok/s':>7}{'link':>9}"
        f"{'relay CPU ms':>13}{'relayed B':>11}{'WAN B via relay':>16}"
    )
    rows: dict[str, Any] = {}
    for delay, by_path in answers.items():
        for path in by_path:
            row = rows[f"{delay:g}ms {path}"] = path_row(answers, delay, path)
            print(
                f"{path:<13}{PATH_HOPS[path]:<21}{delay:>3g}ms{row['ttft_ms']:>9.1f}"
                f"{row['ttft_iqr_ms'][0]:>5.0f}-{row['ttft_iqr_ms'][1]:<4.0f}"
                f"{_cell(row['ttft_extra_rtt'], '+.1f'):>6}{row['decode_tok_s']:>7.1f}"
                f"{'/'.join(row['links']):>9}{_cell(row['relay_cpu_ms'], '.0f'):>13}"
                f"{_cell(row['relayed_bytes'], '.0f'):>11}{_cell(row['wan_bytes_via_relay'], '.0f'):>16}"
            )
    print(f"   every answer the same text: {len(texts) == 1}")
    out: dict[str, Any] = {"rows": rows, "same_text": len(texts) == 1, "rounds": args.rounds}
    if slow:
        punched, public = answers[slow]["punched"], answers[slow]["plain public"]
        gap = rows[f"{slow:g}ms punched"]["ttft_ms"] - rows[f"{slow:g}ms plain public"]["ttft_ms"]
        paired = median(
            [
                statistics.mean(p["first_tokens_ms"]) - statistics.mean(q["first_tokens_ms"])
                for p, q in zip(punched, public, strict=True)
            ]
        )
        print(
            f"   first token, punched - plain public at {slow:g} ms one way: {gap:+.1f} ms = "
            f"{gap / (2 * slow):+.2f} round trips of {2 * slow:g} ms (paired by round: {paired:+.1f} ms = "
            f"{(paired or 0) / (2 * slow):+.2f}); done-when: at most +1"
        )
        out.update(
            punched_minus_public_ms=round(gap, 1),
            punched_minus_public_rtt=round(gap / (2 * slow), 2),
            punched_minus_public_paired_ms=_round(paired, 1),
        )
    return out


def path_row(
    answers: dict[float, dict[str, list[dict[str, Any]]]], delay: float, path: str
) -> dict[str, Any]:
    """The medians of one path at one delay (relay figures for the relayed path only)."""
    runs = answers[delay][path]
    first = [t for a in runs for t in a["first_tokens_ms"]]
    ttft = median(first)
    base = median([t for a in answers.get(0.0, {}).get(path, []) for t in a["first_tokens_ms"]])
    row: dict[str, Any] = {
        "ttft_ms": _round(ttft, 1),
        "ttft_extra_rtt": _round((ttft - base) / (2 * delay), 2) if delay and ttft and base else None,
        "decode_tok_s": _round(median([a["decode_tok_s"] for a in runs]), 1),
        "links": sorted({str(a[k]) for a in runs for k in ("link_first", "link_last")}),
        "relay_cpu_ms": None,
        "relayed_bytes": None,
        "wan_bytes_via_relay": None,
        "ttft_iqr_ms": [round(q) for q in statistics.quantiles(first, n=4)[::2]]
        if len(first) > 1
        else [0, 0],
    }
    if path == "relay only":
        idle = _idle_cpu_rate([a for p, others in answers[delay].items() if p != path for a in others])
        lan = answers[delay]["direct LAN"]
        cpu = median([a["relay_cpu_s"] - idle * a["wall_s"] for a in runs])
        row["relay_cpu_ms"] = None if cpu is None else round(1e3 * cpu, 1)
        row["relayed_bytes"] = median([a["relay_counted_bytes"] for a in runs])
        row["wan_bytes_via_relay"] = median(
            [a["relay_legs"] - b["relay_legs"] for a, b in zip(runs, lan, strict=True)]
        )
    return row


def report_pulls(
    args: argparse.Namespace,
    pulled: dict[float, dict[str, list[dict[str, Any]]]],
    answers: dict[float, dict[str, list[dict[str, Any]]]],
) -> dict[str, Any]:
    print(
        f"\n3. Pulls of b1's {_size_mb(pulled):.0f} MB model by `din model pull` on a2 into a fresh home "
        f"({args.pull_rounds} round(s), alternated); MB/s: first to last chunk (the pull's progress lines); "
        f"pull s: din's own figure (card, wait for a direct link: up to 8 s, transfer); bytes: "
        f"share of the model's that crossed the WAN between the homes, and through pub2"
    )
    print(f"{'pull':<9}{'WAN':>5}{'MB/s':>7}{'pull s':>8}{'homes':>8}{'via pub2':>9}{'relay CPU s/GB':>16}")
    rows: dict[str, Any] = {}
    for delay, by_kind in pulled.items():
        idle = _idle_cpu_rate([a for p, runs in answers[delay].items() if p != "relay only" for a in runs])
        for kind, runs in by_kind.items():
            cpu = median([(r["relay_cpu_s"] - idle * r["wall_s"]) / (r["bytes"] / 1e9) for r in runs])
            row = {
                "mb_s": _round(median([r["mb_s"] for r in runs]), 1),
                "pull_s": _round(median([r["pull_s"] for r in runs]), 1),
                "homes_share": _round(median([r["homes_share"] for r in runs]), 3),
                "relay_share": _round(median([r["relay_share"] for r in runs]), 3),
                "relay_cpu_s_per_gb": _round(cpu, 1) if kind == "relayed" else None,
            }
            rows[f"{delay:g}ms {kind}"] = row
            print(
                f"{kind:<9}{delay:>3g}ms{row['mb_s']:>7.1f}{row['pull_s']:>8.1f}{row['homes_share']:>8.1%}"
                f"{row['relay_share']:>9.1%}{_cell(row['relay_cpu_s_per_gb'], '.1f'):>16}"
            )
    direct = [r["homes_share"] for by_kind in pulled.values() for r in by_kind["direct"]]
    if direct:
        print(
            f"   pulls with hole punching: at least {min(direct):.1%} of the model's bytes crossed "
            f"directly between the homes (done-when: >= 90%)"
        )
    return rows


def _idle_cpu_rate(runs: list[dict[str, Any]]) -> float:
    """The relay's CPU seconds per second while it relays nothing of ours."""
    wall = sum(a["wall_s"] for a in runs)
    return sum(a["relay_cpu_s"] for a in runs) / wall if wall else 0.0


def _size_mb(pulled: dict[float, dict[str, list[dict[str, Any]]]]) -> float:
    return max((r["bytes"] for k in pulled.values() for runs in k.values() for r in runs), default=0) / 1e6


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


if __name__ == "__main__":
    main()
