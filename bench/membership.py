"""What watching 31 peers costs: SWIM membership against the old probe-every-peer watch.

Starts 31 real hosts in one process (`tests/p2p/swim_peers.py`: each serves
`/dinet/swim/1` and `/dinet/manifest/1`), then, one after the other, a prober process
that watches all of them with `LivenessWatch` (a manifest query to every peer every
second, as nodes do today) and with `Membership` (SWIM, default settings). After
`--settle` seconds each prober measures its own CPU time for `--seconds`, while this
script measures the peers' process over the same span. Prints a table, then one JSON line.

    PYTHONPATH=src:. .venv/bin/python bench/membership.py [--peers 31] [--seconds 60] [--settle 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")
MODES = ("liveness", "swim")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


async def probe(mode: str, addrs: list[str], settle: float, seconds: float) -> dict[str, float]:
    """Watch the peers at `addrs` the `mode` way; this process's CPU % and probes per second."""
    from dinet.p2p.directory import PeerDirectory
    from dinet.p2p.discovery import fetch_manifests
    from dinet.p2p.host import open_host
    from dinet.p2p.liveness import LivenessWatch
    from dinet.p2p.membership import Membership
    from dinet.wire.keys import SigningKey

    async with open_host(SigningKey.generate(), ["/ip4/127.0.0.1/tcp/0"]) as host:
        peers = [await host.dial(addr) for addr in addrs]
        probes = 0
        async with trio.open_nursery() as nursery:
            if mode == "liveness":
                directory = PeerDirectory(host.peer_id)
                for peer_id in peers:
                    directory.add_from(peer_id, (await fetch_manifests(host, peer_id))[0])

                def counted(peer_id: object, rtt_ms: float | None) -> None:
                    nonlocal probes
                    probes += 1

                nursery.start_soon(LivenessWatch(host, directory, on_probe=counted).run)
            else:
                membership = Membership(host)
                for peer_id in peers:
                    membership.track(peer_id)
                await nursery.start(membership.run)
            await trio.sleep(settle)

            def sent() -> int:
                return (
                    probes
                    if mode == "liveness"
                    else membership.counts["pings"] + membership.counts["ping_reqs"]
                )

            print(json.dumps("measuring"), flush=True)  # the parent measures the peers meanwhile
            before_cpu, before_probes = time.process_time(), sent()
            await trio.sleep(seconds)
            cpu = time.process_time() - before_cpu
            after = sent()
            dead = len(directory.absent) if mode == "liveness" else sum(membership.is_dead(p) for p in peers)
            nursery.cancel_scope.cancel()
    return {"cpu_pct": 100 * cpu / seconds, "probes_per_s": (after - before_probes) / seconds, "dead": dead}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=31)
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds measured per mode")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds watched before measuring")
    parser.add_argument("--prober", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prober:
        addrs = json.loads(sys.stdin.readline())
        figures = trio.run(probe, args.prober, addrs, args.settle, args.seconds)
        print(json.dumps(figures), flush=True)
        return

    peers = subprocess.Popen(
        [sys.executable, "-m", "tests.p2p.swim_peers", str(args.peers), "--manifests"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    results: dict[str, dict[str, float]] = {}
    try:
        assert peers.stdout is not None
        addrs = json.loads(peers.stdout.readline())["addrs"]
        for mode in MODES:
            command = [sys.executable, __file__, "--prober", mode, "--settle", str(args.settle)]
            prober = subprocess.Popen(
                [*command, "--seconds", str(args.seconds)],
                cwd=REPO,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                assert prober.stdin is not None and prober.stdout is not None
                prober.stdin.write(json.dumps(addrs) + "\n")
                prober.stdin.close()
                assert json.loads(prober.stdout.readline()) == "measuring"
                before = cpu_s(peers.pid)
                figures = json.loads(prober.stdout.readline())
                figures["peers_cpu_pct"] = 100 * (cpu_s(peers.pid) - before) / args.seconds
            finally:
                prober.kill()
                prober.wait()
            results[mode] = figures
    finally:
        peers.kill()
        peers.wait()

    print(f"{'watch':<10} {'prober CPU %':>13} {'probes/s':>9} {'peers CPU %':>12} {'declared dead':>14}")
    for mode, r in results.items():
        figures = f"{r['cpu_pct']:>13.2f} {r['probes_per_s']:>9.2f} {r['peers_cpu_pct']:>12.2f}"
        print(f"{mode:<10} {figures} {r['dead']:>14.0f}")
    print(json.dumps({"bench": "membership", "peers": args.peers, "seconds": args.seconds, **results}))


if __name__ == "__main__":
    main()
