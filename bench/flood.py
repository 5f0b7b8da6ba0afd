"""Does a flood from one peer starve the others? Time to first token, calm and flooded.

Starts one real `din node` (1 llama.cpp thread; per peer 2 requests/s, burst 4, one
stream at a time, as in tests/node/test_abuse.py). Each run times `--samples` requests
of a calm peer, then starts a flooder in its own process (another peer: `--streams`
streams at once, each asking again as soon as it has its answer or refusal), times as
many calm requests during the flood, stops the flooder and reads what it got. Prints,
per run, the median time to first token calm and flooded and their ratio; the node's
own TTFT (from its end frames) and the cores its process used, calm/flooded; the
cores the flooder used; and the flooder's outcomes per second, with how many answers it
got against the most its limits allow. Then the medians over the runs and one JSON line.

    .venv/bin/python bench/flood.py [--runs 3] [--samples 9] [--streams 8] [--flooder closed|open|paced]

`--flooder open` never waits for a reply (it resets each stream after its request);
`--flooder paced` is no flood at all but a peer using its whole allowed rate, one
request at a time: what is left of the calm peer's delay then is its fair share.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from dinet.errors import DinetError
from dinet.node.local_mesh import child_pids, start_node
from dinet.p2p.host import open_host
from dinet.p2p.streams import FramedStream, open_framed
from dinet.wire.ids import INFER_PROTOCOL
from dinet.wire.keys import SigningKey
from dinet.wire.messages import (
    ChatMessage,
    EndFrame,
    ErrorFrame,
    GenerationParams,
    InferRequest,
    QueuedFrame,
    TokenFrame,
    decode_reply,
)

RATE = 2.0  # requests per second one peer may send
BURST = 4  # requests one peer may send at once above its rate
NODE_LIMITS = ["--per-peer-rate", f"{RATE:g}", "--per-peer-burst", f"{BURST}", "--per-peer-concurrency", "1"]
CALM = GenerationParams(messages=(ChatMessage(role="user", content="Say hello."),), max_tokens=8)
FLOOD = GenerationParams(messages=(ChatMessage(role="user", content="Count to ten."),), max_tokens=4)
WARM_UP_S = 1.0  # the flood is under way before the first flooded sample


async def open_infer(host: Any, addr: str) -> FramedStream:
    return await open_framed(host, await host.dial(addr), INFER_PROTOCOL, 10.0)


async def calm_sample(host: Any, addr: str) -> tuple[float, float, int]:
    """(client-side TTFT ms, the node's own TTFT ms, queued frames) of one full answer."""
    framed = await open_infer(host, addr)
    started = time.perf_counter()
    await framed.send(InferRequest(request_id="calm", params=CALM))
    first, queued = None, 0
    with trio.fail_after(60):
        while (payload := await framed.receive()) is not None:
            reply = decode_reply(payload)
            if isinstance(reply, TokenFrame) and first is None:
                first = (time.perf_counter() - started) * 1000
            elif isinstance(reply, QueuedFrame):
                queued += 1
            elif isinstance(reply, EndFrame) and first is not None:
                await framed.close()
                return first, reply.ttft_ms, queued
            elif isinstance(reply, EndFrame | ErrorFrame):
                break
    raise DinetError(f"a calm request was not answered in full: {payload!r}")


async def calm_samples(host: Any, addr: str, count: int) -> list[tuple[float, float, int]]:
    samples = []
    for _ in range(count):
        await trio.sleep(random.uniform(0.05, 0.3))  # arrive at any point of the flooder's cycle
        samples.append(await calm_sample(host, addr))
    return samples


# ---- the flooder, in its own process --------------------------------------------------


async def flooder(addr: str, streams: int, style: str) -> None:
    """Flood until SIGTERM, then print the outcome counts as one JSON line.

    `closed`: each stream asks again as soon as it has its answer or refusal. `open`:
    each stream sends its request and resets at once, never reading a reply. `paced`:
    not a flood: one request at a time, no faster than the node allows (RATE), never refused.
    """
    counts: dict[str, int] = {}

    def count(outcome: str) -> None:
        counts[outcome] = counts.get(outcome, 0) + 1

    async def one(host: Any) -> None:
        try:
            framed = await open_infer(host, addr)
            await framed.send(InferRequest(request_id="flood", params=FLOOD))
            if style == "open":
                await framed.reset()
                count("sent")
                return
            last: object = None
            with trio.fail_after(60):
                while (payload := await framed.receive()) is not None:
                    last = decode_reply(payload)
                    if isinstance(last, EndFrame | ErrorFrame):
                        break
            await framed.close()
            count(last.code if isinstance(last, ErrorFrame) else type(last).__name__)
        except Exception as exc:  # noqa: BLE001 - the node resetting it is an outcome to count
            count(type(exc).__name__)

    async def loop(host: Any) -> None:
        while True:
            began = trio.current_time()
            await one(host)
            if style == "paced":
                await trio.sleep_until(began + 1 / RATE)

    if style == "paced":
        streams = 1
    started = time.perf_counter()
    async with open_host(SigningKey.generate(), ["/ip4/127.0.0.1/tcp/0"]) as host:
        await host.dial(addr)
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            print("ready", flush=True)
            async with trio.open_nursery() as nursery:
                for _ in range(streams):
                    nursery.start_soon(loop, host)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break
    print(json.dumps({"seconds": round(time.perf_counter() - started, 2), "outcomes": counts}), flush=True)


# ---- the run --------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """Cores used by some processes between `start` and `stop`."""

    def __init__(self, pids: dict[str, list[int]]) -> None:
        self._pids = pids
        self._began = time.perf_counter()
        self._cpu = {name: sum(map(cpu_seconds, p)) for name, p in pids.items()}

    def stop(self) -> dict[str, float]:
        wall = time.perf_counter() - self._began
        return {name: round((sum(map(cpu_seconds, p)) - self._cpu[name]) / wall, 2)
                for name, p in self._pids.items()}  # fmt: skip


async def one_run(addr: str, node_pid: int, samples: int, streams: int, style: str) -> dict[str, Any]:
    async with open_host(SigningKey.generate(), ["/ip4/127.0.0.1/tcp/0"]) as host:
        await calm_sample(host, addr)  # connected and warm
        pids = {"node": [node_pid], "worker": child_pids(node_pid), "client": [os.getpid()]}
        meter = CpuMeter(pids)
        calm = await calm_samples(host, addr, samples)
        calm_cpu = meter.stop()
        flood = subprocess.Popen(
            [sys.executable, __file__, "--flood", addr, "--streams", str(streams), "--flooder", style],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,  # libp2p logs each reset stream
        )
        try:
            assert flood.stdout is not None
            ready = await trio.to_thread.run_sync(flood.stdout.readline)
            if ready.strip() != "ready":
                raise DinetError(f"the flooder did not start: {ready!r}")
            await trio.sleep(WARM_UP_S)
            meter = CpuMeter({**pids, "flooder": [flood.pid]})
            flooded = await calm_samples(host, addr, samples)
            flood_cpu = meter.stop()
            flood.send_signal(signal.SIGTERM)
            report = json.loads(await trio.to_thread.run_sync(flood.stdout.readline))
        finally:
            if flood.poll() is None:
                flood.terminate()
            flood.wait()
    calm_ms, flooded_ms = [s[0] for s in calm], [s[0] for s in flooded]
    return {
        "calm_ttft_ms": round(statistics.median(calm_ms)),
        "flood_ttft_ms": round(statistics.median(flooded_ms)),
        "ratio": round(statistics.median(flooded_ms) / statistics.median(calm_ms), 2),
        "calm_node_ttft_ms": round(statistics.median(s[1] for s in calm)),
        "flood_node_ttft_ms": round(statistics.median(s[1] for s in flooded)),
        "flood_queued_frames": sum(s[2] for s in flooded),
        "flood_samples_ms": [round(t) for t in flooded_ms],
        "calm_cpu": calm_cpu,
        "flood_cpu": flood_cpu,
        "flooder": report,
    }


async def main(runs: int, samples: int, streams: int, style: str, node_args: list[str]) -> dict[str, object]:
    results = []
    with tempfile.TemporaryDirectory() as root:
        node = start_node(Path(root) / "node", threads=1, extra_args=[*NODE_LIMITS, *node_args])
        try:
            print(f"{'run':>3}  {'calm ms':>7}  {'flooded ms':>10}  {'ratio':>5}  {'node ms':>11}  "
                  f"{'node cores':>10}  {'flooder cores':>13}  flooder outcomes per s")  # fmt: skip
            for run in range(runs):
                r = await one_run(node.addr, node.process.pid, samples, streams, style)
                results.append(r)
                seconds = r["flooder"]["seconds"]
                outcomes = ", ".join(f"{k} {v / seconds:.1f}" for k, v in r["flooder"]["outcomes"].items())
                # The limiter's promise: never more than the burst plus the rate over the flood.
                served, allowed = r["flooder"]["outcomes"].get("EndFrame", 0), BURST + RATE * seconds
                outcomes += f" (served {served}, at most {allowed:.0f} allowed)"
                node_ms = f"{r['calm_node_ttft_ms']}/{r['flood_node_ttft_ms']}"
                node_cores = f"{r['calm_cpu']['node']:.2f}/{r['flood_cpu']['node']:.2f}"
                print(f"{run + 1:>3}  {r['calm_ttft_ms']:>7}  {r['flood_ttft_ms']:>10}  {r['ratio']:>5.2f}  "
                      f"{node_ms:>11}  {node_cores:>10}  {r['flood_cpu']['flooder']:>13.2f}  {outcomes}",
                      flush=True)  # fmt: skip
        finally:
            node.stop()
    summary = {
        name: statistics.median(r[name] for r in results)
        for name in ("calm_ttft_ms", "flood_ttft_ms", "ratio")
    }
    print(f"median over {runs} runs: TTFT calm {summary['calm_ttft_ms']} ms, flooded "
          f"{summary['flood_ttft_ms']} ms, ratio {summary['ratio']:.2f} (bar: 2.0)")  # fmt: skip
    return {
        "runs": runs,
        "samples": samples,
        "streams": streams,
        "flooder": style,
        **summary,
        "per_run": results,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=9, help="calm requests timed per phase")
    parser.add_argument("--streams", type=int, default=8, help="the flooder's streams at once")
    parser.add_argument(
        "--flooder",
        choices=["closed", "open", "paced"],
        default="closed",
        help="how the flooder asks (see `flooder`)",
    )
    parser.add_argument("--node-arg", action="append", default=[], help="extra `din node` argument")
    parser.add_argument("--flood", metavar="ADDR", help=argparse.SUPPRESS)  # the flooder process
    args = parser.parse_args()
    if args.flood:
        trio.run(flooder, args.flood, args.streams, args.flooder)
    else:
        print(json.dumps(trio.run(main, args.runs, args.samples, args.streams, args.flooder, args.node_arg)))
